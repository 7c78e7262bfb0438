"""User names unique in any case, as sign-up compares them: of two sign-ups at once with one name in two cases, the
database refuses the second, where both were stored."""
from django.conf import settings
from django.core.management.base import CommandError
from django.db import migrations, models
from django.db.models.functions import Upper

# In upper case, as Django's sign-up form compares names (username__iexact) on each database: PostgreSQL folds every
# letter, SQLite ASCII letters only, for the index and the form alike.
USERNAME_UNIQUE_IN_ANY_CASE = models.UniqueConstraint(Upper("username"), name="username_unique_in_any_case")


def username_unique_in_any_case(apps, schema_editor):
    user_model = apps.get_model(settings.AUTH_USER_MODEL)
    folded = user_model.objects.annotate(folded=Upper("username"))
    clashing = folded.values("folded").annotate(count=models.Count("pk")).filter(count__gt=1).values("folded")
    names = list(folded.filter(folded__in=clashing).order_by("folded", "pk").values_list("username", flat=True))
    if names:
        # Which account keeps a name is its people's choice, not a migration's: said, and nothing changed.
        raise CommandError(f"Accounts {', '.join(names)} have names that differ only in case, which the site now "
                           "refuses: rename all but one of each (in the admin, or with `manage.py rename_user NAME NEW_NAME`), "
                           "then migrate again.")
    schema_editor.add_constraint(user_model, USERNAME_UNIQUE_IN_ANY_CASE)


def username_unique_in_any_case_drop(apps, schema_editor):
    schema_editor.remove_constraint(apps.get_model(settings.AUTH_USER_MODEL), USERNAME_UNIQUE_IN_ANY_CASE)


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0008_email_link_refused"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(username_unique_in_any_case, username_unique_in_any_case_drop)]

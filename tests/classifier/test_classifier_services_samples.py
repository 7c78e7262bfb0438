"""The sample-set services, run in-process against the real database."""
import pytest

from classifier import services

pytestmark = pytest.mark.django_db


def test_a_sample_image_is_registered_once_per_set(tmp_path, digit_png):
    path = tmp_path / "3_sample.png"
    path.write_bytes(digit_png(0))
    owner = services.samples_user_get_or_create()
    assert not owner.has_usable_password()
    first, created = services.sample_upload_get_or_create(owner=owner, path=path, sample_set="other", label=3)
    again, created_again = services.sample_upload_get_or_create(owner=owner, path=path, sample_set="other", label=3)
    assert created and not created_again and first.pk == again.pk
    assert first.source == "sample" and first.label == 3


def test_a_samples_account_someone_can_log_in_to_is_not_taken_as_the_samples_owner(django_user_model):
    django_user_model.objects.create_user(username="samples", password="mallory's password")
    with pytest.raises(services.SamplesOwnerError, match="rename it"):
        services.samples_user_get_or_create()


def test_an_account_named_samples_in_another_case_is_named_and_stops_the_loading_instead_of_a_database_error(
    django_user_model,
):
    # Names are unique in any case: "Samples", made by staff in the admin, leaves no room for the samples' owner.
    django_user_model.objects.create_user(username="Samples", password="staff's choice")

    with pytest.raises(services.SamplesOwnerError, match="\"Samples\".*rename it"):
        services.samples_user_get_or_create()
    assert not django_user_model.objects.filter(username="samples").exists()

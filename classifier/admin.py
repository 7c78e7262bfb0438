"""Admin lists for uploads and predictions, sample-set accuracy, and re-running with the active checkpoint."""

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.utils import model_ngettext
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Exists, F, Max, OuterRef, Q
from django.db.models.functions import Coalesce
from django.http import StreamingHttpResponse
from django.template.defaultfilters import filesizeformat, truncatechars
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from classifier import exports, selectors, services
from classifier.models import Prediction, StorageUse, Upload
from mnistsite.admin_display import AdminStyles, admin_when
from mnistsite.admin_requests import HandEditedRequestsMixin, deleted_meanwhile_response
from training.selectors import checkpoint_get_active, checkpoint_list_that_predicted


def _thumbnail(upload_id: int, large: bool = False) -> str:
    # Named: in the lists the picture is a row's link, which a screen reader would otherwise read out as its address.
    # Lazy: a list of a hundred photos asks for the few in view, each scaled from its stored copy when first asked.
    return format_html(
        '<img src="{}" alt="The image of upload {}" class="admin-thumbnail{}" loading="lazy">',
        reverse("classifier:upload_image_scaled", args=[upload_id, 512 if large else 128]),
        upload_id,
        " large" if large else "",
    )


def _views_uploads(request) -> bool:
    return request.user.has_perm(f"{Upload._meta.app_label}.view_{Upload._meta.model_name}")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _result(status: str | None, digit: int | None, confidence: float | None) -> str:
    # A prediction's status and digit share a column: a list of more than a few columns does not fit 1280 px.
    if digit is None:
        return status or "–"
    return f"{digit} ({_percent(confidence)})" if status == "done" else f"{status}: {digit}"


def _truth(label: int | None, feedback: int | None) -> str:
    # A sample's label, or the digit its owner said it was: either is what the prediction should have been.
    if label is not None:
        return str(label)
    return "–" if feedback is None else f"{feedback} (feedback)"


def _share(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a percentage to the nearest tenth (148 of 150: 98.7%), but never rounded up to 100%
    nor down to 0%, which would claim every one or none."""
    if not whole:
        return "–"
    # Half a tenth rounds up, in integers: no float's binary error decides it.
    tenths = (part * 2000 + whole) // (2 * whole)
    if 0 < part < whole:
        tenths = min(max(tenths, 1), 999)
    return f"{tenths / 10:.1f}%"


def _probabilities(probabilities: list | None) -> str:
    if not probabilities:
        return "–"
    return format_html(
        '<table class="probabilities"><tr>{}</tr><tr>{}</tr></table>',
        format_html_join("", "<th>{}</th>", ((digit,) for digit in range(len(probabilities)))),
        format_html_join("", "<td>{}</td>", ((f"{p:.1%}",) for p in probabilities)),
    )


def _origin(upload: Upload) -> str:
    if upload.sample_set:
        return f"sample {upload.sample_set}"
    return f"{upload.owner} ({upload.source})" if upload.owner_id else upload.source


# The uploads that have no prediction at all: staff deleted them, and the upload waits to be read again.
_NO_PREDICTION = "none"


class LatestStatusFilter(admin.SimpleListFilter):
    title = "newest prediction's status"
    parameter_name = "latest_status"

    def lookups(self, request, model_admin):
        return [*Prediction.Status.choices, (_NO_PREDICTION, "none: its predictions were deleted")]

    def queryset(self, request, queryset):
        if self.value() == _NO_PREDICTION:
            return queryset.filter(~Exists(Prediction.objects.filter(upload=OuterRef("pk"))))
        return selectors.upload_filter_latest(queryset, status=self.value()) if self.value() else queryset


def _number(value: str) -> int:
    # The admin answers this with its "?e=1" page, not a 500, for a hand-edited query string.
    try:
        return int(value)
    except ValueError:
        raise IncorrectLookupParameters(f"{value!r} is not a number") from None


class LatestDigitFilter(admin.SimpleListFilter):
    title = "newest prediction's digit"
    parameter_name = "latest_digit"

    def lookups(self, request, model_admin):
        return [(str(d), str(d)) for d in range(10)]

    def queryset(self, request, queryset):
        return selectors.upload_filter_latest(queryset, digit=_number(self.value())) if self.value() else queryset


class ListedValuesFilter(admin.AllValuesFieldListFilter):
    """A field's filter whose choices are listed by ``listed_values``, not found by a DISTINCT over every row.

    The DISTINCT took a few hundred milliseconds a page at a million rows. Its
    URLs (``?digit=3``, ``?digit__isnull=True``) stay those of Django's own filter.
    """

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        self.lookup_choices = self.listed_values()

    def listed_values(self) -> list:
        raise NotImplementedError


class DigitValuesFilter(ListedValuesFilter):
    def listed_values(self) -> list:
        return [*range(10), None]


class SampleSetValuesFilter(ListedValuesFilter):
    """The sample sets, read from the sample constraint's small partial index, and the users' own uploads."""

    def listed_values(self) -> list:
        sample_sets = Upload.objects.exclude(sample_set="").values_list("sample_set", flat=True).distinct()
        return [*sample_sets.order_by("sample_set"), ""]

    def choices(self, changelist):
        for choice in super().choices(changelist):
            if choice["display"] == "":
                choice = {**choice, "display": "none: users' uploads"}
            yield choice


# What a result is measured against: a sample's label, else the digit its owner said the image shows.
_RIGHT, _WRONG = "right", "wrong"


class VerdictFilter(admin.SimpleListFilter):
    """A finished prediction's digit against the true digit; predictions without a true digit are in neither."""

    title = "against the true digit"
    parameter_name = "verdict"

    def lookups(self, request, model_admin):
        return [(_RIGHT, "right"), (_WRONG, "wrong")]

    def queryset(self, request, queryset):
        if self.value() not in (_RIGHT, _WRONG):
            return queryset
        return self.verdict_filter(queryset)

    def verdict_filter(self, queryset):
        truth = Coalesce(F("upload__label"), F("feedback"))
        done = queryset.filter(status=Prediction.Status.DONE)
        if self.value() == _RIGHT:
            return done.filter(digit=truth)
        return done.filter(Q(digit__lt=truth) | Q(digit__gt=truth))


class LatestVerdictFilter(VerdictFilter):
    """The uploads whose newest prediction is finished and gave, or missed, the true digit."""

    title = "newest against the true digit"

    def verdict_filter(self, queryset):
        # The newest prediction carries its upload's feedback forward (services.predictions_rerun).
        truth = Coalesce(OuterRef("label"), F("feedback"))
        done = Prediction.Status.DONE
        if self.value() == _RIGHT:
            return selectors.upload_filter_latest(queryset, status=done, digit=truth)
        return selectors.upload_filter_latest(queryset, status=done, digit__lt=truth) | selectors.upload_filter_latest(
            queryset, status=done, digit__gt=truth
        )


class CheckpointFilter(admin.SimpleListFilter):
    title = "checkpoint"
    parameter_name = "checkpoint"

    def lookups(self, request, model_admin):
        # Not the newest fifty of every epoch's: the active one of many runs ago would drop out of the list.
        return [(str(c.pk), str(c)) for c in checkpoint_list_that_predicted()]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return queryset.filter(checkpoint_id=_number(self.value()))


class LatestCheckpointFilter(CheckpointFilter):
    """The uploads whose newest prediction the checkpoint made, as the list's other filters and its "newest" column.

    Any prediction by it, combined with "newest prediction's status: failed", listed uploads that checkpoint had
    read well and another had failed on since.
    """

    title = "newest prediction's checkpoint"

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        return selectors.upload_filter_latest(queryset, checkpoint_id=_number(self.value()))


# The most uploads one re-run takes: all of them are queued in one transaction of one request, about 3 s for 10,000.
RERUN_MAX_SELECTED = 20_000


@admin.action(description="Re-run with the active checkpoint", permissions=["rerun"])
def rerun_uploads(modeladmin, request, queryset):
    if checkpoint_get_active() is None:
        modeladmin.message_user(request, "No checkpoint is active; activate one first.", messages.ERROR)
        return
    selected = Upload.objects.filter(pk__in=queryset.values("pk" if queryset.model is Upload else "upload_id"))
    count = selected.count()
    if count > RERUN_MAX_SELECTED:
        modeladmin.message_user(
            request,
            f"{count:,} uploads are selected, and at most {RERUN_MAX_SELECTED:,} are re-run at once; nothing was "
            "queued. Narrow the list with its filters (a sample set, a status, a date) and re-run each part.",
            messages.ERROR,
        )
        return
    # A prediction still waiting will be read by the active checkpoint anyway: a second click queues nothing twice.
    waiting = set(
        selectors.upload_filter_latest(selected, status=Prediction.Status.PENDING).values_list("pk", flat=True)
    )
    uploads = [upload for upload in selected if upload.pk not in waiting]
    # One deleted after the list was read is left out by the re-run.
    # Behind every upload sent meanwhile: a re-run of thousands must not hold up people's uploads.
    created = services.predictions_rerun(uploads=uploads, priority=services.PRIORITY_BULK) if uploads else []
    skipped = f"; {len(waiting)} already waiting for a worker left as they are" if waiting else ""
    modeladmin.message_user(
        request, f"Queued {len(created)} new prediction(s) with the active checkpoint{skipped}.", messages.SUCCESS
    )


@admin.action(description="Delete selected %(verbose_name_plural)s", permissions=["delete"])
def delete_selected(modeladmin, request, queryset):
    """Django's deletion, but all or nothing and at most services.STAFF_DELETE_MAX rows, whose confirmation of
    "select all" names the list's filters instead of every row's id.

    Django's form posts each id back: past 1,000 that request is refused (DATA_UPLOAD_MAX_NUMBER_FIELDS), so a
    "select all" of more could not be deleted. The confirmation says how many match now, and the deletion takes
    no row made after it and none at all if more match by then. Django's own deletion read every row in full and
    committed each one's history entry before deleting them in many transactions: about 0.5 ms a row, so that
    gunicorn's timeout would have cut a deletion of 250,000 short with part of them deleted and all recorded.
    """
    plural = queryset.model._meta.verbose_name_plural
    across = request.POST.get("select_across") == "1"
    confirmed_post = bool(request.POST.get("post"))
    if across and confirmed_post:
        try:
            newest, confirmed = int(request.POST["newest"]), int(request.POST["confirmed"])
        except (KeyError, ValueError):
            modeladmin.message_user(request, "The confirmation was incomplete; nothing was deleted.", messages.ERROR)
            return None
        queryset = queryset.filter(pk__lte=newest)
        matching = queryset.count()
        if matching > confirmed:
            modeladmin.message_user(
                request,
                f"{matching:,} {plural} match now, not the {confirmed:,} confirmed; nothing was deleted. Select them "
                "again to see what would go.",
                messages.ERROR,
            )
            return None
    try:
        # Before the confirmation page too: refused up front, not after staff confirmed.
        services.staff_deletion_size_check(selected=queryset.count())
        if confirmed_post:
            return _delete_confirmed(modeladmin, request, queryset)
    except services.StaffDeleteTooManyError as exc:
        _refuse_too_many(modeladmin, request, plural=plural, error=exc)
        return None
    response = django_delete_selected(modeladmin, request, queryset)
    if across and response is not None and hasattr(response, "context_data"):
        # The newest row, matching or not: one that comes to match later was there all the same.
        newest = queryset.model.objects.order_by().aggregate(newest=Max("pk"))["newest"] or 0
        response.context_data.update(select_across=True, newest=newest, confirmed=queryset.count())
    return response


def _delete_confirmed(modeladmin, request, queryset):
    """What Django's action does once confirmed, through the admin's ``delete_queryset``, which records each row's
    history entry in the deletion's own transaction and says how many went."""
    _, _, perms_needed, protected = modeladmin.get_deleted_objects(queryset, request)
    if protected:
        return django_delete_selected(modeladmin, request, queryset)  # its page says what protects them
    if perms_needed:
        raise PermissionDenied
    deleted = modeladmin.delete_queryset(request, queryset)
    if deleted:
        modeladmin.message_user(
            request, f"Successfully deleted {deleted} {model_ngettext(modeladmin.opts, deleted)}.", messages.SUCCESS
        )
    return None


def _refuse_too_many(modeladmin, request, *, plural: str, error) -> None:
    modeladmin.message_user(
        request,
        f"{error.selected:,} {plural} are selected, and at most {error.most:,} are deleted at once; nothing was "
        "deleted. Narrow the list with its filters (a sample set, a status, a digit, a date) and delete each part"
        + (", or run manage.py delete_uploads (see its --help)." if modeladmin.model is Upload else "."),
        messages.ERROR,
    )


@admin.action(description="Export results as CSV", permissions=["view"])
def export_results_csv(modeladmin, request, queryset):
    """The selected rows' results, streamed: every upload of a "select all" is read a chunk at a time."""
    ids = list(queryset.values_list("pk", flat=True))
    if queryset.model is Upload:
        rows = selectors.upload_rows_for_staff(upload_ids=ids)
    else:
        rows = selectors.prediction_rows_for_staff(prediction_ids=ids)
    name = f"{queryset.model._meta.model_name}-results-{timezone.now():%Y%m%d-%H%M%S}.csv"
    response = StreamingHttpResponse(exports.staff_results_csv(rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


class DeletedMeanwhileMixin:
    """A change page's save of a row deleted since the page was read (``obj.deleted_meanwhile``) says so instead."""

    def log_change(self, request, obj, message):
        if not getattr(obj, "deleted_meanwhile", False):
            return super().log_change(request, obj, message)
        return None

    def response_change(self, request, obj):
        if not getattr(obj, "deleted_meanwhile", False):
            return super().response_change(request, obj)
        return deleted_meanwhile_response(model_admin=self, request=request,
                                          message=f"{obj} was deleted meanwhile; nothing was saved.")


class RerunActionMixin:
    """The re-run action, offered on both lists to staff allowed to change uploads, and the export, to all who view.

    An action's permission is checked against the list it sits on: on the predictions' list "change" would mean
    changing predictions, and a re-run queues new work for every selected upload.
    """

    actions = [rerun_uploads, export_results_csv]

    def has_rerun_permission(self, request) -> bool:
        return request.user.has_perm(f"{Upload._meta.app_label}.change_{Upload._meta.model_name}")


# Past this many selected rows the deletion's confirmation says how many go instead of listing each.
DELETE_LIST_MAX = 100


def _listed_one_by_one(objs) -> bool:
    return isinstance(objs, list) or objs.count() <= DELETE_LIST_MAX


class IdsFirstPaginator(Paginator):
    """Finds a page's rows by their ids alone, then reads only those rows in full.

    An OFFSET makes the database produce every row it skips, with whatever the
    list reads for a row: the newest prediction of each upload, the joined owner
    and checkpoint. At page 500 of a million uploads that took about 1.5 s.
    """

    def page(self, number):
        number = self.validate_number(number)
        if number == 1:
            # Nothing skipped: the page's rows alone are read in full anyway, and a second statement would only
            # cost (more, with a sparse filter, under a parallel plan that overshoots a bare LIMIT of ids).
            return super().page(number)
        bottom = (number - 1) * self.per_page
        ids = list(self.object_list.values_list("pk", flat=True)[bottom : bottom + self.per_page])
        rows = {row.pk: row for row in self.object_list.filter(pk__in=ids)}
        return self._get_page([rows[pk] for pk in ids if pk in rows], number, self)


@admin.register(Upload)
class UploadAdmin(AdminStyles, HandEditedRequestsMixin, DeletedMeanwhileMixin, RerunActionMixin, admin.ModelAdmin):
    # Narrow enough for a 1280 px window: the newest prediction's status and digit before where the upload came from.
    list_display = ("thumbnail", "name", "latest_prediction_display", "true_digit", "origin", "created")
    list_display_links = ("thumbnail", "name")
    list_filter = (
        LatestStatusFilter, LatestDigitFilter, LatestVerdictFilter, "source", ("sample_set", SampleSetValuesFilter),
        LatestCheckpointFilter, "created_at",
    )
    search_fields = ("original_name", "owner__username", "sha256")
    list_select_related = ("owner",)
    # No count of the whole table beside the filtered one, and no date hierarchy (a DISTINCT over every upload's
    # date): with a million uploads each took seconds a page. The "created at" filter asks the database nothing.
    # Nor per-choice counts ("Show counts"): a filter of our own counts each choice against the whole filtered
    # list again (over ten seconds at a million predictions).
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = IdsFirstPaginator
    actions = [delete_selected, *RerunActionMixin.actions]
    # Whose an upload is, and where it came from, are facts: moving one to another owner would show it to them and
    # leave both owners' storage counts wrong. Its name and a sample's label may be corrected.
    # The picture is shown, and linked, through the image view, which checks who may see it: the file field's own
    # link would point into the media folder, which is not served.
    readonly_fields = (
        "thumbnail_large", "newest_prediction", "owner", "source", "sample_set", "sha256", "format", "size",
        "stored_size", "width", "height", "created_at",
    )
    exclude = ("image",)
    change_list_template = "admin/classifier/upload/change_list.html"

    def get_queryset(self, request):
        return selectors.upload_annotate_latest(super().get_queryset(request))

    def has_add_permission(self, request):
        # Uploads come through the site, the API or the sample loader, which validate and store the image.
        return False

    @admin.display(description="image")
    def thumbnail(self, obj):
        return _thumbnail(obj.pk)

    @admin.display(description="image")
    def thumbnail_large(self, obj):
        if not obj.pk:
            return "–"
        return format_html(
            '<a href="{}" title="The stored image, full size">{}</a>',
            reverse("classifier:upload_image", args=[obj.pk]),
            _thumbnail(obj.pk, large=True),
        )

    @admin.display(description="newest prediction")
    def newest_prediction(self, obj):
        newest = selectors.prediction_latest_for_upload(upload=obj) if obj.pk else None
        if newest is None:
            return "–"
        everything = reverse("admin:classifier_prediction_changelist") + f"?upload__id__exact={obj.pk}"
        return format_html(
            '<a href="{}">{}</a>, by checkpoint {} (<a href="{}">every prediction of this upload</a>){}',
            reverse("admin:classifier_prediction_change", args=[newest.pk]),
            _result(newest.status, newest.digit, newest.confidence),
            newest.checkpoint_id or "–",
            everything,
            _probabilities(newest.probabilities),
        )

    @admin.display(description="name", ordering="original_name")
    def name(self, obj):
        return truncatechars(obj.original_name, 20) or f"upload {obj.pk}"

    @admin.display(description="newest", ordering="latest_confidence")
    def latest_prediction_display(self, obj):
        return _result(obj.latest_status, obj.latest_digit, obj.latest_confidence)

    @admin.display(description="true digit")
    def true_digit(self, obj):
        return _truth(obj.label, obj.latest_feedback)

    @admin.display(description="from", ordering="owner__username")
    def origin(self, obj):
        return _origin(obj)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return admin_when(obj.created_at)

    def changelist_view(self, request, extra_context=None):
        checkpoint = checkpoint_get_active()
        accuracy = [
            {**vars(row), "accuracy": _share(row.correct, row.predicted)}
            for row in selectors.sample_set_accuracy(checkpoint=checkpoint)
        ]
        extra_context = {**(extra_context or {}), "active_checkpoint": checkpoint, "sample_accuracy": accuracy}
        return super().changelist_view(request, extra_context=extra_context)

    def get_deleted_objects(self, objs, request):
        """Django's list of everything a deletion takes, or for a large selection only how many of each.

        The list names each upload and each prediction with a link: "select all" of 10,000 uploads made a page of
        4 MB that took seconds to build.
        """
        if _listed_one_by_one(objs):
            return super().get_deleted_objects(objs, request)
        uploads = objs.count()
        predictions = Prediction.objects.filter(upload__in=objs.values("pk")).count()
        summary = [
            f"{uploads:,} uploads, their stored images and their {predictions:,} predictions "
            f"(too many to list one by one; more than {DELETE_LIST_MAX})"
        ]
        perms_needed = set()
        if predictions and not self.admin_site._registry[Prediction].has_delete_permission(request):
            perms_needed.add(Prediction._meta.verbose_name)
        counts = {Upload._meta.verbose_name_plural: uploads, Prediction._meta.verbose_name_plural: predictions}
        return summary, counts, perms_needed, []

    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
            return
        changed = {field: getattr(obj, field) for field in form.changed_data}
        obj.deleted_meanwhile = bool(changed) and not services.upload_update(upload=obj, fields=changed)

    def delete_model(self, request, obj):
        services.upload_delete(upload=obj)

    def delete_queryset(self, request, queryset) -> int:
        # With their history entries, in one transaction: never some deleted and all recorded.
        return services.uploads_delete_by_staff(user=request.user, uploads=queryset)


@admin.register(Prediction)
class PredictionAdmin(
    AdminStyles, HandEditedRequestsMixin, DeletedMeanwhileMixin, RerunActionMixin, admin.ModelAdmin
):
    # Narrow enough for a 1280 px window: the result first, then the model that gave it and how long it took.
    list_display = ("thumbnail", "result", "truth", "upload_link", "checkpoint_display", "timing", "created")
    list_display_links = ("thumbnail", "result")
    list_filter = (
        "status", ("digit", DigitValuesFilter), VerdictFilter, "upload__source",
        ("upload__sample_set", SampleSetValuesFilter), CheckpointFilter, "several_digits", "created_at",
    )
    search_fields = ("upload__original_name", "upload__owner__username")
    list_select_related = ("upload", "upload__owner", "checkpoint")
    # As for uploads: the checkpoint filter's counts would each read the whole filtered list again.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = IdsFirstPaginator
    # Everything but the owner's answer is the workers' record: "attempts" set by hand would fail a waiting
    # prediction as one that kept losing its worker, "model hand backs" as one no worker could run the model on.
    readonly_fields = (
        "thumbnail_large", "upload", "checkpoint", "status", "digit", "confidence_display", "probabilities_display",
        "model_input", "device", "several_digits", "queue_display", "compute_display", "error", "attempts",
        "model_hand_backs", "publish_attempts", "priority",
        "published_at", "created_at", "started_at", "finished_at",
    )
    # Shown formatted, by the readonly fields above.
    exclude = ("probabilities", "confidence", "queue_ms", "compute_ms")

    actions = [delete_selected, *RerunActionMixin.actions]

    def has_add_permission(self, request):
        return False

    def delete_queryset(self, request, queryset) -> int:
        return services.predictions_delete_by_staff(user=request.user, predictions=queryset)

    def get_deleted_objects(self, objs, request):
        """As for uploads: a large selection's confirmation says how many go, not each one."""
        if _listed_one_by_one(objs):
            return super().get_deleted_objects(objs, request)
        count = objs.count()
        summary = [f"{count:,} predictions (too many to list one by one; more than {DELETE_LIST_MAX})"]
        return summary, {Prediction._meta.verbose_name_plural: count}, set(), []

    # The uploaded image is the upload's: served only to staff allowed to view uploads, it would be a broken
    # picture on every row for the others, who see the model's input on each prediction's page.
    def get_list_display(self, request):
        return super().get_list_display(request) if _views_uploads(request) else self.list_display[1:]

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        return fields if _views_uploads(request) else tuple(f for f in fields if f != "thumbnail_large")

    @admin.display(description="image")
    def thumbnail(self, obj):
        return _thumbnail(obj.upload_id)

    @admin.display(description="image")
    def thumbnail_large(self, obj):
        return _thumbnail(obj.upload_id, large=True) if obj.pk else "–"

    @admin.display(description="confidence")
    def confidence_display(self, obj):
        return _percent(obj.confidence)

    @admin.display(description="queued for (ms)")
    def queue_display(self, obj):
        return _ms(obj.queue_ms)

    @admin.display(description="compute (ms)")
    def compute_display(self, obj):
        return _ms(obj.compute_ms)

    @admin.display(description="probabilities")
    def probabilities_display(self, obj):
        return _probabilities(obj.probabilities)

    def save_model(self, request, obj, form, change):
        if not change:
            super().save_model(request, obj, form, change)
            return
        # The feedback, the one field staff may change, is the image's: the service gives it to the upload's newer
        # predictions too, which the lists' true digit reads, under the lock a re-run takes while it carries the
        # feedback forward. A whole-row save would also write back a result a worker stored meanwhile.
        if "feedback" in form.changed_data:
            try:
                services.prediction_feedback_set(prediction=obj, digit=obj.feedback)
            except Prediction.DoesNotExist:
                obj.deleted_meanwhile = True

    @admin.display(description="model input")
    def model_input(self, obj):
        if not obj.input_pixels:
            return "–"
        return format_html(
            '<img src="{}" alt="The 28x28 picture the model saw" width="112" height="112" class="model-input">',
            reverse("classifier:prediction_input", args=[obj.pk]),
        )

    @admin.display(description="upload", ordering="upload_id")
    def upload_link(self, obj):
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:classifier_upload_change", args=[obj.upload_id]), _origin(obj.upload)
        )

    @admin.display(description="result", ordering="confidence")
    def result(self, obj):
        return _result(obj.status, obj.digit, obj.confidence)

    @admin.display(description="true digit")
    def truth(self, obj):
        return _truth(obj.upload.label, obj.feedback)

    @admin.display(description="model", ordering="checkpoint_id")
    def checkpoint_display(self, obj):
        return "–" if obj.checkpoint_id is None else f"{obj.checkpoint_id} {obj.checkpoint.architecture}"

    @admin.display(description="queue + run ms", ordering="compute_ms")
    def timing(self, obj):
        return format_html(
            '<span title="{}">{} + {}</span>', f"on {obj.device}" if obj.device else "", _ms(obj.queue_ms),
            _ms(obj.compute_ms),
        )

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return admin_when(obj.created_at)


@admin.register(StorageUse)
class StorageUseAdmin(admin.ModelAdmin):
    """Whose uploads take the most, on the media volume (UPLOAD_QUOTA_MB); kept as uploads come and go."""

    list_display = ("owner", "used", "of_quota")
    ordering = ("-bytes",)
    search_fields = ("owner__username",)
    list_select_related = ("owner",)
    # Deleted with their owner only: a user's deletion in the admin asks for this model's delete permission too, so
    # it is left as Django's, and the list's delete action and the row's own delete page are taken away (the owner's
    # next upload would count from zero again, leaving every byte they stored so far outside the quota).
    actions = None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def delete_view(self, request, object_id, extra_context=None):
        raise PermissionDenied

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "show_delete": False})

    @admin.display(description="uploads take", ordering="bytes")
    def used(self, obj):
        return filesizeformat(obj.bytes)

    @admin.display(description="of UPLOAD_QUOTA_MB")
    def of_quota(self, obj):
        quota = selectors.storage_quota()
        return "no limit" if quota is None else f"{obj.bytes / quota:.0%}"

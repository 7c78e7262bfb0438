"""Admin lists for uploads and predictions, sample-set accuracy, and re-running with the active checkpoint."""
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.paginator import Paginator
from django.template.defaultfilters import filesizeformat, truncatechars
from django.urls import reverse
from django.utils.html import format_html

from classifier import selectors, services
from classifier.models import Prediction, StorageUse, Upload
from mnistsite.admin_display import AdminStyles, admin_when
from training.selectors import checkpoint_get_active


def _thumbnail(upload_id: int, large: bool = False) -> str:
    return format_html(
        '<img src="{}" alt="" class="admin-thumbnail{}">',
        reverse("classifier:upload_image", args=[upload_id]),
        " large" if large else "",
    )


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


def _origin(upload: Upload) -> str:
    if upload.sample_set:
        return f"sample {upload.sample_set}"
    return f"{upload.owner} ({upload.source})" if upload.owner_id else upload.source


class LatestStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "latest_status"

    def lookups(self, request, model_admin):
        return Prediction.Status.choices

    def queryset(self, request, queryset):
        return selectors.upload_filter_latest(queryset, status=self.value()) if self.value() else queryset


def _number(value: str) -> int:
    # The admin answers this with its "?e=1" page, not a 500, for a hand-edited query string.
    try:
        return int(value)
    except ValueError:
        raise IncorrectLookupParameters(f"{value!r} is not a number") from None


class LatestDigitFilter(admin.SimpleListFilter):
    title = "predicted digit"
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


class CheckpointFilter(admin.SimpleListFilter):
    title = "checkpoint"
    parameter_name = "checkpoint"

    def lookups(self, request, model_admin):
        from training.models import Checkpoint

        return [(str(c.pk), str(c)) for c in Checkpoint.objects.order_by("-created_at")[:50]]

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        checkpoint_id = _number(self.value())
        if queryset.model is Upload:
            return queryset.filter(predictions__checkpoint_id=checkpoint_id).distinct()
        return queryset.filter(checkpoint_id=checkpoint_id)


@admin.action(description="Re-run with the active checkpoint", permissions=["rerun"])
def rerun_uploads(modeladmin, request, queryset):
    uploads = list(queryset.model.objects.filter(pk__in=queryset.values("pk"))) if queryset.model is Upload else list(
        Upload.objects.filter(pk__in=queryset.values("upload_id"))
    )
    if checkpoint_get_active() is None:
        modeladmin.message_user(request, "No checkpoint is active; activate one first.", messages.ERROR)
        return
    created = services.predictions_rerun(uploads=uploads)
    modeladmin.message_user(request, f"Queued {len(created)} new prediction(s) with the active checkpoint.", messages.SUCCESS)


class RerunActionMixin:
    """The re-run action, offered on both lists to staff allowed to change uploads.

    An action's permission is checked against the list it sits on: on the predictions' list "change" would mean
    changing predictions, and a re-run queues new work for every selected upload.
    """

    actions = [rerun_uploads]

    def has_rerun_permission(self, request) -> bool:
        return request.user.has_perm(f"{Upload._meta.app_label}.change_{Upload._meta.model_name}")


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
class UploadAdmin(AdminStyles, RerunActionMixin, admin.ModelAdmin):
    # Narrow enough for a 1280 px window: the newest prediction's status and digit before where the upload came from.
    list_display = ("thumbnail", "name", "latest_prediction_display", "true_digit", "origin", "created")
    list_display_links = ("thumbnail", "name")
    list_filter = (
        LatestStatusFilter, LatestDigitFilter, "source", ("sample_set", SampleSetValuesFilter), CheckpointFilter,
        "created_at",
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
    # Whose an upload is, and where it came from, are facts: moving one to another owner would show it to them and
    # leave both owners' storage counts wrong. Its name and a sample's label may be corrected.
    # The picture is shown, and linked, through the image view, which checks who may see it: the file field's own
    # link would point into the media folder, which is not served.
    readonly_fields = (
        "thumbnail_large", "owner", "source", "sample_set", "sha256", "format", "size", "stored_size", "width",
        "height", "created_at",
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
        extra_context = {
            **(extra_context or {}),
            "active_checkpoint": checkpoint,
            "sample_accuracy": selectors.sample_set_accuracy(checkpoint=checkpoint),
        }
        return super().changelist_view(request, extra_context=extra_context)

    def delete_model(self, request, obj):
        services.upload_delete(upload=obj)

    def delete_queryset(self, request, queryset):
        for upload in queryset:
            services.upload_delete(upload=upload)


@admin.register(Prediction)
class PredictionAdmin(AdminStyles, RerunActionMixin, admin.ModelAdmin):
    # Narrow enough for a 1280 px window: the result first, then the model that gave it and how long it took.
    list_display = ("thumbnail", "result", "truth", "upload_link", "checkpoint_display", "timing", "created")
    list_display_links = ("thumbnail", "result")
    list_filter = (
        "status", ("digit", DigitValuesFilter), "upload__source", ("upload__sample_set", SampleSetValuesFilter),
        CheckpointFilter, "several_digits", "created_at",
    )
    search_fields = ("upload__original_name", "upload__owner__username")
    list_select_related = ("upload", "upload__owner", "checkpoint")
    # As for uploads: the checkpoint filter's counts would each read the whole filtered list again.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    paginator = IdsFirstPaginator
    readonly_fields = (
        "upload", "checkpoint", "status", "digit", "confidence", "probabilities", "model_input", "device",
        "several_digits", "queue_ms", "compute_ms", "error", "publish_attempts", "published_at", "created_at", "started_at", "finished_at",
    )

    def has_add_permission(self, request):
        return False

    @admin.display(description="image")
    def thumbnail(self, obj):
        return _thumbnail(obj.upload_id)

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
    # it is left as Django's, and only the list's own delete action is taken away.
    actions = None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="uploads take", ordering="bytes")
    def used(self, obj):
        return filesizeformat(obj.bytes)

    @admin.display(description="of UPLOAD_QUOTA_MB")
    def of_quota(self, obj):
        quota = selectors.storage_quota()
        return "no limit" if quota is None else f"{obj.bytes / quota:.0%}"

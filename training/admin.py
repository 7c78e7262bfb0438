"""Admin pages for training: start, watch and cancel runs; list, inspect, activate and delete checkpoints."""
from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from mnistsite.admin_display import AdminStyles, admin_when
from mnistsite.admin_requests import HandEditedRequestsMixin
from training import charts, selectors, services
from training.forms import TrainingRunStartForm
from training.models import Checkpoint, TrainingRun


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def _accuracy_so_far(run: TrainingRun, accuracy: float | None, *, unfinished: str) -> str:
    """A run's accuracy, with the epoch it was measured after (and ``unfinished``) until the run has succeeded."""
    if accuracy is None or run.status == TrainingRun.Status.SUCCEEDED:
        return _percent(accuracy)
    epochs_done = len(run.metrics or [])
    notes = [f"epoch {epochs_done} of {run.epochs}"] * bool(epochs_done) + [unfinished] * bool(unfinished)
    return f"{_percent(accuracy)} ({', '.join(notes)})" if notes else _percent(accuracy)


def _waited(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes} minute{'' if minutes == 1 else 's'}"
    return f"{minutes // 60} hours"


def _refuse_form_save(request: HttpRequest) -> HttpResponse | None:
    """A 405 for a POST to a run's or a checkpoint's change page; None for a GET.

    Every field is read-only and the page offers no Save button, yet Django's own change view saves whatever is
    posted to it: the whole row, as read a moment before, over what a trainer or an activation wrote meanwhile (a
    finished run made running again, the checkpoint just activated deactivated, leaving none active).
    """
    if request.method == "POST":
        return HttpResponseNotAllowed(["GET", "HEAD"])
    return None


def _confirmation(
    model_admin: admin.ModelAdmin, request: HttpRequest, *, template: str, obj, step: str, change_url: str,
    action_url: str, **extra,
) -> TemplateResponse:
    """The "Are you sure?" page of an action on ``obj`` (admin/training/confirmation.html), posting to
    ``action_url``."""
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Are you sure?",
        "subtitle": None,
        "object": obj,
        "step": step,
        "media": model_admin.media,
        "change_url": change_url,
        "action_url": action_url,
        **extra,
    }
    return TemplateResponse(request, template, context)


def _tests_worse(checkpoint: Checkpoint, *, than: Checkpoint | None) -> str:
    """Why activating ``checkpoint`` in place of ``than`` deserves a second thought, or "" when it does not."""
    if than is None:
        return ""
    compared = selectors.checkpoint_accuracies_compared(checkpoint=checkpoint, other=than)
    if compared is None or not compared.is_below:
        return ""
    return (
        f"Its {compared.kind} accuracy, {compared.accuracy:.2%}, is below the active checkpoint's "
        f"{compared.other_accuracy:.2%}. Once it has made predictions it cannot be deleted: they keep naming the "
        "model that made them."
    )


def _no_trainer_warning(run: TrainingRun) -> str:
    """A warning for staff when no trainer has taken this queued run for a while; empty otherwise."""
    untaken_for = selectors.training_run_untaken_for(run=run)
    if untaken_for is None:
        return ""
    return format_html(
        "Queued for {}: no trainer has taken it. Is a trainer worker running "
        "(<code>celery -A mnistsite worker -Q training</code>, or the compose service <code>trainer</code>)?",
        _waited(untaken_for.total_seconds()),
    )


class DeviceFilter(admin.AllValuesFieldListFilter):
    """The devices runs trained on; a run not started has none yet, named so rather than left an empty link."""

    def choices(self, changelist):
        for choice in super().choices(changelist):
            yield {**choice, "display": "not started"} if choice["display"] == "" else choice


@admin.register(TrainingRun)
class TrainingRunAdmin(AdminStyles, HandEditedRequestsMixin, admin.ModelAdmin):
    # Narrow enough for a 1280 px window: what a run is doing first, its recipe and owner after.
    list_display = ("id", "status", "progress_bar", "validation", "accuracy", "recipe", "created")
    list_display_links = ("id", "status")
    list_filter = ("status", "architecture", ("device", DeviceFilter), "activate_on_success")
    search_fields = ("id", "created_by__username", "error")
    date_hierarchy = "created_at"
    actions = ("cancel_runs",)
    fieldsets = (
        ("Recipe", {"fields": (
            "architecture", "epochs", "batch_size", "learning_rate", "seed", "augment", "train_subset",
            "requested_device", "activate_on_success",
        )}),
        # Status, device, progress, step and ETA are the Progress panel's, which keeps them current as the run goes.
        ("State", {"fields": ("validation", "accuracy", "cancel_requested", "attempts")}),
        ("Book-keeping", {"fields": (
            "created_by", "celery_task_id", "published_at", "created_at", "started_at", "queued_at", "heartbeat_at",
            "finished_at",
        )}),
    )

    # Runs change only through services, never through a form.
    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in TrainingRun._meta.fields] + ["validation", "accuracy"]

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="progress, time")
    def progress_bar(self, run: TrainingRun) -> str:
        bar = format_html(
            '<progress class="training-progress" value="{}" max="1" title="{}"></progress> {} · {}',
            f"{run.progress:.4f}", f"{run.progress:.0%}", f"{run.progress:.0%}", _duration(run.duration_seconds),
        )
        if warning := _no_trainer_warning(run):
            return format_html('{}<ul class="messagelist"><li class="warning">{}</li></ul>', bar, warning)
        return bar

    @admin.display(description="validation accuracy", ordering="validation_accuracy")
    def validation(self, run: TrainingRun) -> str:
        # Written as each epoch ends, and kept by a run that then failed or was cancelled: only a succeeded run's
        # is its final model's.
        return _accuracy_so_far(run, run.validation_accuracy, unfinished="")

    @admin.display(description="test accuracy", ordering="test_accuracy")
    def accuracy(self, run: TrainingRun) -> str:
        # Measured once, on the final model of a run that succeeded. Runs from before the validation split wrote
        # each epoch's, and kept it when they then failed or were cancelled: only a succeeded run's is final.
        return _accuracy_so_far(run, run.test_accuracy, unfinished="not final")

    @admin.display(description="model", ordering="architecture")
    def recipe(self, run: TrainingRun) -> str:
        return f"{run.architecture} on {run.device}" if run.device else run.architecture

    @admin.display(description="created", ordering="created_at")
    def created(self, run: TrainingRun) -> str:
        return f"{admin_when(run.created_at)} by {run.created_by}" if run.created_by_id else admin_when(run.created_at)

    def get_queryset(self, request):
        return selectors.training_run_list()

    @admin.action(description="Cancel the selected runs", permissions=["change"])
    def cancel_runs(self, request: HttpRequest, queryset) -> None:
        cancelled = 0
        for run in queryset:
            try:
                services.training_run_cancel(run=run, by=request.user)
                cancelled += 1
            except services.TrainingRunStateError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        if cancelled:
            self.message_user(request, f"Cancellation requested for {cancelled} run(s).", messages.SUCCESS)

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path("<int:object_id>/cancel/", wrap(self.cancel_view), name="%s_%s_cancel" % info),
            path("<int:object_id>/progress/", wrap(self.progress_view), name="%s_%s_progress" % info),
            *super().get_urls(),
        ]

    def _get_run(self, object_id: int) -> TrainingRun:
        try:
            return selectors.training_run_get(run_id=object_id)
        except TrainingRun.DoesNotExist:
            raise Http404("No such training run.") from None

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context=None) -> HttpResponse:
        """The "Start training run" page: a plain form handed to the create service."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TrainingRunStartForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                run = services.training_run_create(created_by=request.user, **form.cleaned_data)
            except ValidationError as exc:
                for field, errors in exc.message_dict.items():
                    form.add_error(field if field in form.fields else None, errors)
            else:
                self.message_user(request, f"Training run {run.pk} queued.", messages.SUCCESS)
                # As Django's own add view does: staff who may start runs but not view them would meet a 403 there.
                if not self.has_view_or_change_permission(request, run):
                    return redirect(reverse("admin:index"))
                return redirect(reverse("admin:training_trainingrun_change", args=[run.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Start training run",
            "form": form,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/training/trainingrun/start.html", context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        if refused := _refuse_form_save(request):
            return refused
        # A run that does not exist (deleted, mistyped) is left to Django, which goes to the admin's index saying so.
        run = selectors.training_run_list().filter(pk=int(object_id)).first() if str(object_id).isdigit() else None
        context = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False,
                   "show_delete": False, **(extra_context or {})}
        if run is not None:
            # Epochs are evaluated on the validation set; runs from before it, on the test set: the table says which.
            held_out = charts.metrics_held_out(metrics=run.metrics or [])
            context.update(
                run=run,
                metrics_held_out=held_out,
                metrics_rows=[
                    {**row, "held_out_loss": row.get(f"{held_out}_loss"),
                     "held_out_accuracy": row.get(f"{held_out}_accuracy")}
                    for row in run.metrics or []
                ],
                curves=charts.run_curves_svg(metrics=run.metrics or []),
                confusion_svg=charts.confusion_matrix_svg(matrix=run.confusion_matrix) if run.confusion_matrix else None,
                # A run already asked to cancel stops at its next step: a second request would change nothing.
                can_cancel=not run.is_finished and not run.cancel_requested and self.has_change_permission(request, run),
                elapsed=_duration(run.duration_seconds) if run.started_at else "",
                eta=_duration(run.eta_seconds),
                checkpoint_count=run.checkpoints.count() if self._may_view_checkpoints(request) else 0,
                checkpoints_url=reverse("admin:training_checkpoint_changelist") + f"?run__id__exact={run.pk}",
                progress_url=reverse("admin:training_trainingrun_progress", args=[run.pk]),
                cancel_url=reverse("admin:training_trainingrun_cancel", args=[run.pk]),
                final_checkpoint=run.checkpoints.filter(is_final=True).first(),
                # Only a failed run's error is one: a queued or running run's says why it was restarted (it
                # resumes), a succeeded run's why its model was not activated as asked.
                run_error=run.error if run.status == TrainingRun.Status.FAILED else "",
                run_note=run.error if run.status != TrainingRun.Status.FAILED else "",
                no_trainer_warning=_no_trainer_warning(run),
            )
        return super().change_view(request, object_id, form_url, extra_context=context)

    def _may_view_checkpoints(self, request: HttpRequest) -> bool:
        return self.admin_site.get_model_admin(Checkpoint).has_view_or_change_permission(request)

    def cancel_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        run = self._get_run(object_id)
        if not self.has_change_permission(request, run):
            raise PermissionDenied
        change_url = reverse("admin:training_trainingrun_change", args=[run.pk])
        if request.method != "POST":
            # A run may have trained for hours: the button only leads here, and cancelling takes a second click.
            if run.is_finished:
                done = "is already cancelled" if run.status == TrainingRun.Status.CANCELLED else f"has already {run.status}"
                self.message_user(request, f"Run {run.pk} {done}; it cannot be cancelled.", messages.ERROR)
                return redirect(change_url)
            if run.cancel_requested:
                self.message_user(
                    request, f"Run {run.pk} is already asked to cancel; it stops at its next step.", messages.WARNING
                )
                return redirect(change_url)
            return _confirmation(
                self, request, template="admin/training/trainingrun/cancel_confirmation.html", obj=run, step="Cancel",
                change_url=change_url, action_url=reverse("admin:training_trainingrun_cancel", args=[run.pk]),
                run=run,
            )
        try:
            run = services.training_run_cancel(run=run, by=request.user)
        except services.TrainingRunStateError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            note = "cancelled" if run.status == TrainingRun.Status.CANCELLED else "will stop at its next step"
            self.message_user(request, f"Training run {run.pk} {note}.", messages.SUCCESS)
        return redirect(change_url)

    def progress_view(self, request: HttpRequest, object_id: int) -> JsonResponse:
        run = self._get_run(object_id)
        if not self.has_view_permission(request, run):
            raise PermissionDenied
        return JsonResponse(selectors.training_run_progress(run=run))


@admin.register(Checkpoint)
class CheckpointAdmin(AdminStyles, HandEditedRequestsMixin, admin.ModelAdmin):
    # Whether a checkpoint is the active one matters most, so it comes first; where it came from fits one column.
    list_display = ("id", "is_active", "checkpoint_model", "validation", "accuracy", "origin", "size_display", "created")
    list_display_links = ("id",)
    list_filter = ("is_active", "is_final", "architecture")
    search_fields = ("id", "path", "sha256")
    actions = ("activate_checkpoint", "delete_selected")
    list_select_related = ("run",)
    # Refusals listed at most, for a bulk deletion of many checkpoints.
    REFUSALS_SHOWN = 10

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Checkpoint._meta.fields]

    def has_add_permission(self, request):
        return False

    def get_queryset(self, request):
        return selectors.checkpoint_list()

    # Deleting goes through the service, which refuses a checkpoint still needed and removes the files once the
    # deletion commits. Django's own would show a page of every prediction a protected checkpoint made.
    def delete_model(self, request, obj):
        services.checkpoint_delete(checkpoint=obj)

    def delete_queryset(self, request, queryset):
        services.checkpoints_delete(checkpoints=queryset)

    def _refuse_deletion(self, request: HttpRequest, reasons: list[str]) -> None:
        self.message_user(request, "Nothing was deleted.", messages.ERROR)
        for reason in reasons[: self.REFUSALS_SHOWN]:
            self.message_user(request, reason, messages.ERROR)
        if len(reasons) > self.REFUSALS_SHOWN:
            self.message_user(
                request, f"And {len(reasons) - self.REFUSALS_SHOWN} more that cannot be deleted.", messages.ERROR
            )

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None):
        checkpoint = self.get_object(request, object_id)
        if checkpoint is None:
            return super().delete_view(request, object_id, extra_context)
        change_url = reverse("admin:training_checkpoint_change", args=[checkpoint.pk])
        if self.has_delete_permission(request, checkpoint):
            refusal = selectors.checkpoint_deletion_refusal(checkpoint=checkpoint)
            if refusal is not None:
                self._refuse_deletion(request, [refusal])
                return redirect(change_url)
        try:
            return super().delete_view(request, object_id, extra_context)
        except services.CheckpointInUseError as exc:
            # Became needed between the confirmation page and the deletion.
            self._refuse_deletion(request, exc.reasons)
            return redirect(change_url)

    @admin.action(description=django_delete_selected.short_description, permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset):
        reasons = [
            reason for checkpoint in queryset.order_by("pk")
            if (reason := selectors.checkpoint_deletion_refusal(checkpoint=checkpoint))
        ]
        if reasons:
            self._refuse_deletion(request, reasons)
            return None
        try:
            # Django records the deletions in the admin's history before it deletes: a refusal must take them back.
            with transaction.atomic():
                return django_delete_selected(self, request, queryset)
        except services.CheckpointInUseError as exc:
            self._refuse_deletion(request, exc.reasons)
            return None

    # Checkpoints are picked by their validation accuracy; only a run's final model is measured on the test set.
    @admin.display(description="validation accuracy", ordering="validation_accuracy")
    def validation(self, checkpoint: Checkpoint) -> str:
        return _percent(checkpoint.validation_accuracy)

    @admin.display(description="test accuracy", ordering="test_accuracy")
    def accuracy(self, checkpoint: Checkpoint) -> str:
        return _percent(checkpoint.test_accuracy)

    @admin.display(description="model", ordering="architecture")
    def checkpoint_model(self, checkpoint: Checkpoint) -> str:
        return checkpoint.architecture

    @admin.display(description="from", ordering="run_id")
    def origin(self, checkpoint: Checkpoint) -> str:
        final = " (final)" if checkpoint.is_final else ""
        if not checkpoint.run_id:
            return f"no run, epoch {checkpoint.epoch}{final}"
        return format_html(
            '<a href="{}">run {}</a>, epoch {}{}',
            reverse("admin:training_trainingrun_change", args=[checkpoint.run_id]), checkpoint.run_id,
            checkpoint.epoch, final,
        )

    @admin.display(description="size", ordering="size")
    def size_display(self, checkpoint: Checkpoint) -> str:
        return filesizeformat(checkpoint.size)

    @admin.display(description="created", ordering="created_at")
    def created(self, checkpoint: Checkpoint) -> str:
        return admin_when(checkpoint.created_at)

    @admin.action(description="Activate the selected checkpoint", permissions=["change"])
    def activate_checkpoint(self, request: HttpRequest, queryset) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one checkpoint to activate.", messages.WARNING)
            return None
        return redirect(reverse("admin:training_checkpoint_activate", args=[queryset.get().pk]))

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<int:object_id>/activate/",
                self.admin_site.admin_view(self.activate_view),
                name="%s_%s_activate" % info,
            ),
            *super().get_urls(),
        ]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        if refused := _refuse_form_save(request):
            return refused
        context = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False,
                   **(extra_context or {})}
        if str(object_id).isdigit():
            context["activate_url"] = reverse("admin:training_checkpoint_activate", args=[int(object_id)])
            context["can_activate"] = self.has_change_permission(request)
        return super().change_view(request, object_id, form_url, extra_context=context)

    def activate_view(self, request: HttpRequest, object_id: int) -> HttpResponse:
        """Asks first, naming the model it replaces, and warns when that one tests better: once it has made
        predictions a checkpoint cannot be deleted, and every prediction from then on is its."""
        try:
            checkpoint = selectors.checkpoint_get(checkpoint_id=object_id)
        except Checkpoint.DoesNotExist:
            raise Http404("No such checkpoint.") from None
        if not self.has_change_permission(request, checkpoint):
            raise PermissionDenied
        change_url = reverse("admin:training_checkpoint_change", args=[checkpoint.pk])
        if checkpoint.is_active:
            self.message_user(request, f"{checkpoint} is already active; nothing changed.", messages.INFO)
            return redirect(change_url)
        if request.method != "POST":
            return self._activate_confirmation(request, checkpoint=checkpoint, change_url=change_url)
        # The checkpoint the page said it replaces: another activated since (a colleague, a run when done) is asked
        # about again, as it may test better. A form without it (an older page) is taken as it is.
        replacing = request.POST.get("replacing")
        try:
            checkpoint = services.checkpoint_activate(
                checkpoint=checkpoint, by=request.user,
                replacing=... if replacing is None else (int(replacing) if replacing.isdigit() else None),
            )
        except services.ActiveCheckpointChangedError:
            return self._activate_confirmation(request, checkpoint=checkpoint, change_url=change_url, changed=True)
        except services.CheckpointNotLoadableError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, f"{checkpoint} is now active.", messages.SUCCESS)
        return redirect(change_url)

    def _activate_confirmation(
        self, request: HttpRequest, *, checkpoint: Checkpoint, change_url: str, changed: bool = False
    ) -> TemplateResponse:
        active = selectors.checkpoint_get_active()
        return _confirmation(
            self, request, template="admin/training/checkpoint/activate_confirmation.html", obj=checkpoint,
            step="Activate", change_url=change_url,
            action_url=reverse("admin:training_checkpoint_activate", args=[checkpoint.pk]),
            checkpoint=checkpoint, active=active, worse=_tests_worse(checkpoint, than=active), changed=changed,
        )

"""Forms for uploading, drawing, giving feedback, and filtering the history and deleting from it."""
import base64
import binascii
import io

from django import forms
from django.conf import settings
from django.forms.utils import pretty_name

from classifier.models import Prediction
from classifier.services import UPLOADS_DELETE_MAX_SELECTED

CANVAS_PREFIX = "data:image/png;base64,"


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Many files under one name; content checks are left to classifier.validation."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_empty_file", True)
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        files = data if isinstance(data, (list, tuple)) else ([data] if data else [])
        return [super(MultipleFileField, self).clean(item, initial) for item in files]


class UploadForm(forms.Form):
    """Either image files or a drawing exported from the canvas as a PNG data URL."""

    files = MultipleFileField(
        widget=MultipleFileInput(attrs={"multiple": True, "accept": "image/png,image/jpeg,image/gif,image/webp,image/bmp"}),
        required=False,
    )
    canvas = forms.CharField(widget=forms.HiddenInput, required=False)

    def clean_canvas(self):
        value = self.cleaned_data.get("canvas") or ""
        if not value:
            return None
        if not value.startswith(CANVAS_PREFIX):
            raise forms.ValidationError("The drawing could not be read; please draw again.")
        # Base64 is 4/3 of the bytes; refuse before decoding anything larger than an upload may be.
        if len(value) > settings.UPLOAD_MAX_BYTES * 4 // 3 + len(CANVAS_PREFIX) + 4:
            raise forms.ValidationError("The drawing is too large.")
        try:
            return base64.b64decode(value[len(CANVAS_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise forms.ValidationError("The drawing could not be read; please draw again.") from None

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("files") and not cleaned.get("canvas") and not self.errors:
            raise forms.ValidationError("Choose at least one image, or draw a digit.")
        if cleaned.get("files") and cleaned.get("canvas"):
            # The page's two forms never send both; taking one and dropping the other would lose an upload unsaid.
            raise forms.ValidationError("Send either image files or a drawing, not both at once.")
        return cleaned

    def submissions(self) -> tuple[list[tuple[object, str | None]], str]:
        """(file, name) pairs for the services, and the upload source."""
        if self.cleaned_data.get("canvas"):
            return [(io.BytesIO(self.cleaned_data["canvas"]), "drawing.png")], "canvas"
        return [(file, file.name) for file in self.cleaned_data["files"]], "file"


class FeedbackForm(forms.Form):
    digit = forms.IntegerField(min_value=0, max_value=9, required=False)


def _are_row_ids(ids) -> bool:
    """Whether every one of ``ids`` can be a row's id: beyond 64 bits none can, and SQLite refuses such a number."""
    return all(0 < pk < 2**63 for pk in ids)


class _FilterField:
    """A history filter whose error quotes what was sent: the field itself cannot show it, as a date box drops a date
    it cannot read and a list shows its first choice instead."""

    SHOWN_CHARS = 40

    def __init__(self, *args, not_understood: str, **kwargs):
        self.not_understood = not_understood
        super().__init__(*args, **kwargs)

    def clean(self, value):
        try:
            return super().clean(value)
        except forms.ValidationError:
            raise forms.ValidationError(
                f"“%(value)s” is not {self.not_understood}, so this filter is not applied.",
                code="invalid",
                params={"value": _shown_value(value)},
            ) from None


class _FilterChoiceField(_FilterField, forms.TypedChoiceField):
    pass


class _FilterDateField(_FilterField, forms.DateField):
    pass


def _shown_value(value) -> str:
    """A value read from an address, as a filter's error quotes it: an address can carry any text, and a long one is
    cut short rather than flood the page."""
    text = str(value)
    return text if len(text) <= _FilterField.SHOWN_CHARS else text[: _FilterField.SHOWN_CHARS - 1] + "…"


def _said_as_list(values: list[str]) -> str:
    """“7” and “2”; “a”, “b” and “c”."""
    quoted = [f"“{_shown_value(value)}”" for value in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


class HistoryFilterForm(forms.Form):
    """The history's filters, read from its address: one that cannot be applied as sent is named beside its field and
    left out, and the others still apply."""

    digit = _FilterChoiceField(
        choices=[("", "Any digit")] + [(str(d), str(d)) for d in range(10)],
        coerce=int,
        empty_value=None,
        required=False,
        not_understood="a digit from 0 to 9",
    )
    # Labelled as the badges show them: a pending prediction is "queued".
    status = _FilterChoiceField(
        choices=[("", "Any status")]
        + [(value, Prediction.PENDING_WORD.capitalize() if value == Prediction.Status.PENDING else label)
           for value, label in Prediction.Status.choices],
        required=False,
        not_understood="a status",
    )
    date_from = _FilterDateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="From", not_understood="a date"
    )
    date_to = _FilterDateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"}), label="To", not_understood="a date"
    )
    batch = forms.CharField(required=False, widget=forms.HiddenInput)

    BATCH_NOT_UNDERSTOOD = "This batch's address was not understood, so every upload is shown."

    def __init__(self, data=None, *args, **kwargs) -> None:
        # A filter sent more than once (digit=3&digit=4) is not applied, as the API refuses it: which was meant is not
        # known. Left out of the data, its field shows no choice, which is what applies.
        self.repeated: dict[str, list[str]] = {}
        if data is not None and hasattr(data, "getlist"):
            self.repeated = {name: data.getlist(name) for name in self.base_fields if len(data.getlist(name)) > 1}
            if self.repeated:
                data = data.copy()
                for name in self.repeated:
                    del data[name]
        super().__init__(data, *args, **kwargs)

    def clean(self):
        cleaned = super().clean()
        for name, values in self.repeated.items():
            if name == "batch":
                self.add_error(name, forms.ValidationError(self.BATCH_NOT_UNDERSTOOD, code="repeated"))
                continue
            self.add_error(name, forms.ValidationError(
                "“%(filter)s” was sent %(times)s, as %(values)s, so this filter is not applied.",
                code="repeated",
                params={
                    "filter": self.fields[name].label or pretty_name(name),
                    "times": "twice" if len(values) == 2 else f"{len(values)} times",
                    "values": _said_as_list(values),
                },
            ))
        first, last = cleaned.get("date_from"), cleaned.get("date_to")
        if first and last and first > last:
            # No day lies between them: applied, they would show nothing and say only that nothing matches.
            del cleaned["date_to"]
            self.add_error("date_from", forms.ValidationError(
                "“From”, %(first)s, is after “To”, %(last)s, so neither date is applied.",
                code="dates_reversed",
                params={"first": f"{first:%Y-%m-%d}", "last": f"{last:%Y-%m-%d}"},
            ))
        return cleaned

    def clean_batch(self) -> tuple[int, ...]:
        value = self.cleaned_data.get("batch") or ""
        try:
            ids = tuple(int(part) for part in value.split(",") if part.strip())[: settings.UPLOAD_MAX_FILES]
        except ValueError:
            ids = (0,)
        # Not understood, it is said so, as for the other filters: read as no batch, "all that match" would mean
        # every upload.
        if not _are_row_ids(ids):
            raise forms.ValidationError(self.BATCH_NOT_UNDERSTOOD, code="invalid")
        return ids


class UploadIdsField(forms.Field):
    """Upload ids sent as one field repeated (``upload=3&upload=5``): the rows ticked on a history page."""

    widget = forms.MultipleHiddenInput

    def __init__(self, *, max_ids: int, **kwargs):
        self.max_ids = max_ids
        super().__init__(**kwargs)

    def to_python(self, value) -> tuple[int, ...]:
        values = value if isinstance(value, (list, tuple)) else ([value] if value else [])
        try:
            ids = tuple(sorted({int(item) for item in values}))
        except (TypeError, ValueError):
            raise forms.ValidationError("The selection could not be read; nothing was deleted.") from None
        if not _are_row_ids(ids):
            raise forms.ValidationError("The selection could not be read; nothing was deleted.")
        if len(ids) > self.max_ids:
            raise forms.ValidationError(f"At most {self.max_ids} uploads can be selected at once; nothing was deleted.")
        return ids


class UploadsDeleteForm(forms.Form):
    """Which uploads to delete: those ticked (``upload``), or all that match the history's filters (``matching``).

    ``newest`` is the highest upload id when the deletion was offered: uploads stored since are never among them.
    ``count`` is how many matched then, the number the person agreed to: no more are deleted. Without ``confirmed``
    the confirmation page comes first.
    """

    upload = UploadIdsField(max_ids=UPLOADS_DELETE_MAX_SELECTED, required=False)
    matching = forms.BooleanField(required=False)
    newest = forms.IntegerField(min_value=0, max_value=2**63 - 1, required=False)
    count = forms.IntegerField(min_value=1, max_value=2**63 - 1, required=False)
    confirmed = forms.BooleanField(required=False)

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("matching") and not self.errors and (cleaned.get("newest") is None or not cleaned.get("count")):
            raise forms.ValidationError("The deletion could not be read; nothing was deleted.")
        return cleaned

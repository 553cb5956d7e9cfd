"""The Generate form, rendered from a workflow's parameter definition.

Validation is not repeated here: the workflow's :class:`~generation.workflows.fields.Parameters`
is the one place that says what is valid. This module turns posted fields into the submit body
(each control's HTML name is its parameter's dotted path) and puts each ``ParamsInvalid`` path
back at the control that produced it, with everything the person typed kept.
"""

import datetime

from django import forms
from django.utils import timezone

from generation.selectors import SEARCH_WORDS, RequestFilters, checkpoint_names
from generation.states import Status
from generation.workflows import all_workflows
from generation.workflows.common import SIZE_PRESETS
from generation.workflows.fields import MISSING, Context, Image, Loras, lookup

CONTENT_KINDS = frozenset({"image", "text", "loras"})  # what the person gives: the form's left column
COMPACT_KINDS = frozenset({"integer", "number", "choice"})  # two to a row in the settings column


def input_image_field(workflow):
    """The image parameter a result fills ("use as input") and a mask is painted over: the
    workflow's first image that is not a mask, or ``None``."""
    return next((item for item in workflow.parameters if isinstance(item, Image) and not item.is_mask), None)


class GenerateForm:
    """The values shown in the Generate form for one workflow, the choices it offers, and its errors.

    ``values`` maps each parameter's dotted name to what is shown (typed text is kept verbatim);
    ``errors`` maps dotted names to messages (a LoRA's own problems are under its name in
    ``lora_errors``).
    """

    def __init__(self, workflow, data=None, *, initial=None, user=None):
        self.workflow = workflow
        self.ctx = Context(user=user)
        self.is_bound = data is not None
        self.errors = {}
        self.lora_errors = {}
        self.non_field_errors = []
        self.values = {}
        self.data = {}
        self.previews = {}  # image control name -> URL of the image it carries (set by the view)
        for item in workflow.parameters:
            if self.is_bound:
                raw = item.from_form(data)
                if raw is not MISSING:
                    _store(self.data, item.name, raw)
                self.values[item.name] = raw if raw is not MISSING else ""
            else:
                value = lookup(initial or {}, item.name)
                self.values[item.name] = item.form_value(value) if value is not None else item.initial(self.ctx)

    @classmethod
    def from_request(cls, request, *, same_seed=True, user=None):
        """A form pre-filled with an earlier request's parameters ("edit these settings")."""
        workflow = request.workflow
        params = request.params if same_seed else workflow.parameters.with_new_seeds(request.params)
        return cls(workflow, initial=params, user=user)

    def to_data(self):
        """The body for :func:`generation.services.submit_generation` (values as typed)."""
        return {"workflow": self.workflow.slug, **self.data}

    def set_value(self, name, value):
        """Replace what a control carries (an uploaded image becomes its input id)."""
        _store(self.data, name, value)
        self.values[name] = value

    def add_params_errors(self, fields):
        """Place each ``ParamsInvalid.fields`` entry at the control it came from."""
        names = {item.name: item for item in self.workflow.parameters}
        for path, messages in fields.items():
            target = self._control_of(path, names)
            if target is None:
                self.non_field_errors.extend(f"{path}: {m}" if path != "non_field_errors" else m for m in messages)
            elif isinstance(target, tuple):  # one LoRA's own problem
                lora_name, key = target
                label = {"strength_model": "Model strength: ", "strength_clip": "CLIP strength: "}.get(key, "")
                self.lora_errors.setdefault(lora_name, []).extend(label + m for m in messages)
            else:
                self.errors.setdefault(target, []).extend(messages)

    def _control_of(self, path, names):
        if path in names:
            return path
        for name, item in names.items():
            if isinstance(item, Image) and path == item.url_name:
                return name
            if isinstance(item, Loras) and path.startswith(f"{name}."):
                index, _, key = path[len(name) + 1:].partition(".")
                chosen = self.values.get(name) or []
                if index.isdigit() and int(index) < len(chosen) and isinstance(chosen[int(index)], dict):
                    return chosen[int(index)].get("name", ""), key
                return name
        head = path.split(".")[0]
        return head if head in names else None

    @property
    def has_errors(self):
        return bool(self.errors or self.lora_errors or self.non_field_errors)

    # --- rendering -------------------------------------------------------------------------------

    def controls(self, *, advanced, content=None):
        """The controls to render, in definition order: ``{"field", "value", "errors", …}``.

        ``content`` True keeps what the person gives (images, text, LoRAs: the left column), False
        the settings (the right column), ``None`` both.
        """
        rows = []
        for item in self.workflow.parameters:
            if item.advanced != advanced or (content is not None and (item.kind in CONTENT_KINDS) != content):
                continue
            row = {"field": item, "value": self.values.get(item.name, ""), "errors": self.errors.get(item.name, []),
                   "template": f"generation/fields/{item.widget}.html", "compact": item.kind in COMPACT_KINDS}
            if item.kind in ("integer", "number"):
                row["min"], row["max"] = item.bounds(self.ctx)
                row["step"] = item.step(self.ctx)
            elif item.kind == "choice":
                row["choices"] = item.choices(self.ctx)
            elif item.kind == "model":
                row["options"] = item.options()
            elif item.kind == "loras":
                row["rows"] = self.lora_rows(item)
                row["strength_min"], row["strength_max"] = item.strength_bounds(self.ctx)
            elif item.kind == "text":
                row["max_length"] = item.max_length(self.ctx)
            elif item.kind == "image":
                row["preview"] = self.previews.get(item.name)
                if item.is_mask and (image := input_image_field(self.workflow)) is not None:
                    row["paints_over"] = image.html_id
            rows.append(row)
        return rows

    @property
    def content_controls(self):
        return self.controls(advanced=False, content=True)

    @property
    def settings_controls(self):
        return self.controls(advanced=False, content=False)

    @property
    def advanced_controls(self):
        return self.controls(advanced=True)

    @property
    def advanced_open(self):
        """Keep "Advanced" open when one of its fields has an error or differs from its default."""
        for item in self.workflow.parameters:
            if not item.advanced:
                continue
            if item.name in self.errors:
                return True
            if str(self.values.get(item.name, "")) != str(item.initial(self.ctx)):
                return True
        return False

    def lora_rows(self, field):
        """One row per offered LoRA (plus any chosen one no longer offered, so its error shows)."""
        chosen = {item["name"]: item for item in (self.values.get(field.name) or [])
                  if isinstance(item, dict) and item.get("name")}
        offered = field.options()
        names = {model.name for model in offered}
        default = {"strength_model": 1.0, "strength_clip": 1.0}
        rows = [{"model": model, "name": model.name, "chosen": model.name in chosen,
                 "strengths": {**default, **chosen.get(model.name, {})},
                 "errors": self.lora_errors.get(model.name, [])} for model in offered]
        rows += [{"model": None, "name": name, "chosen": True, "strengths": {**default, **strengths},
                  "errors": self.lora_errors.get(name, [])}
                 for name, strengths in chosen.items() if name not in names]
        for row in rows:
            row["model_input"] = field.strength_name(row["name"], "strength_model")
            row["clip_input"] = field.strength_name(row["name"], "strength_clip")
        return rows

    @property
    def workflows(self):
        return all_workflows(self.ctx.user)

    @property
    def size_presets(self):
        names = {item.name for item in self.workflow.parameters}
        if not {"width", "height"} <= names:
            return []
        return [{"width": w, "height": h, "label": f"{w} × {h}"} for w, h in SIZE_PRESETS]

    @property
    def needs_checkpoint(self):
        return any(item.kind == "model" and item.required and not item.options() for item in self.workflow.parameters)

    @property
    def has_images(self):
        return any(isinstance(item, Image) for item in self.workflow.parameters)


def _store(data, name, value):
    parts = name.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


class HistoryFilterForm(forms.Form):
    """The History page's filters, from the query string: invalid values are reported at their
    control and left out of the filter, so a mistyped date never empties the page. ``workflows``:
    those the person may choose from.

    The dates are whole days in the display time zone, both inclusive (``date_to`` 2026-12-01
    includes that day); the rules themselves are :func:`generation.selectors.filter_requests`.
    """

    SORTS = {"newest": "Newest first", "oldest": "Oldest first"}

    search = forms.CharField(required=False, max_length=200, label="Search prompts", strip=True,
                             widget=forms.SearchInput(attrs={"placeholder": f"Up to {SEARCH_WORDS} words",
                                                             "autocomplete": "off"}))
    status = forms.ChoiceField(required=False, label="Status")
    workflow = forms.ChoiceField(required=False, label="Workflow")
    checkpoint = forms.ChoiceField(required=False, label="Checkpoint")
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
    sort = forms.ChoiceField(required=False, label="Sort", choices=list(SORTS.items()))

    def __init__(self, data, *, workflows, **kwargs):
        super().__init__(data, **kwargs)
        self.fields["status"].choices = [("", "All"), *Status.choices]
        self.fields["workflow"].choices = [("", "All"), *[(w.slug, w.name) for w in workflows]]
        self.fields["checkpoint"].choices = [("", "All"), *[(name, name) for name in checkpoint_names()]]

    EARLIEST, LATEST = datetime.date(1970, 1, 1), datetime.date(9999, 12, 30)  # a day after LATEST still exists

    def _clean_day(self, name):
        day = self.cleaned_data.get(name)
        if day and not self.EARLIEST <= day <= self.LATEST:
            raise forms.ValidationError(f"Enter a date from {self.EARLIEST.year} on.")
        return day

    def clean_date_from(self):
        return self._clean_day("date_from")

    def clean_date_to(self):
        return self._clean_day("date_to")

    def clean(self):
        data = super().clean()
        first, last = data.get("date_from"), data.get("date_to")
        if first and last and first > last:
            self.add_error("date_to", "Must not be before the start date.")
        return data

    def _value(self, name):
        return None if name in self.errors else self.cleaned_data.get(name)  # .errors validates first

    @property
    def newest_first(self):
        return self._value("sort") != "oldest"

    def filters(self):
        """The valid part as :class:`~generation.selectors.RequestFilters`."""
        first, last = self._value("date_from"), self._value("date_to")
        return RequestFilters(
            statuses=(self._value("status"),) if self._value("status") else (),
            workflow=self._value("workflow") or None, checkpoint=self._value("checkpoint") or None,
            search=self._value("search") or "",
            created_after=_start_of(first) if first else None,
            created_before=_start_of(last + datetime.timedelta(days=1)) if last else None)

    @property
    def is_filtered(self):
        return bool(self.filters())


def _start_of(day):
    """Midnight at the start of ``day`` in the display time zone."""
    return timezone.make_aware(datetime.datetime.combine(day, datetime.time.min))

"""The radiologist's pages: the worklist (``/``) and one study (``/studies/<key>``).

The worklist is a table filled by a small inline script that polls ``/api/studies``
every few seconds (no full reload: the filters and the scroll position stay); the study
page is rendered here from the same data as ``/api/studies/<key>`` and its buttons POST
the actions with the session's CSRF token. ``/studies/<key>`` is the link notifications
carry (``web.base_url``), so an unauthenticated visit goes to the login and back.
"""

from __future__ import annotations

import html
import json
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse

from dicom_node.store.index import STATES
from dicom_node.web.api import source, study_or_404
from dicom_node.web.auth import Principal, page_principal
from dicom_node.web.context import WebContext, context
from dicom_node.web.html import page
from models.labels import LABELS

POLL_MS: Final = 4000

router = APIRouter(tags=["pages"])

Ctx = Annotated[WebContext, Depends(context)]
Who = Annotated[Principal, Depends(page_principal)]

_WORKLIST: Final = """
<div class="filters">
  <label>State <select id="state"><option value="">all</option>{states}</select></label>
  <label>Finding <select id="finding"><option value="">any or none</option>{findings}</select>
  </label>
  <span class="muted" id="status"></span>
</div>
<table id="worklist"><thead><tr><th>Arrival</th><th>Patient</th><th>Accession</th>
<th>State</th><th>Findings</th><th>Delivery</th></tr></thead><tbody></tbody></table>
<script>
const POLL_MS = {poll_ms};
function el(tag, cls, text) {{
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}}
function row(s) {{
  const tr = el("tr", "row" + (s.positive ? " positive" : ""));
  tr.dataset.key = s.key;
  tr.onclick = () => {{ location.href = "/studies/" + encodeURIComponent(s.key); }};
  tr.appendChild(el("td", "", new Date(s.arrival).toLocaleString()));  // the monitor's zone
  const p = el("td");
  const a = el("a", "", s.patient.name.replace(/\\^/g, " ") || "(no name)");
  a.href = "/studies/" + encodeURIComponent(s.key);  // keyboard: the row's click, as a link
  p.appendChild(a);
  p.appendChild(el("div", "muted", s.patient.id));
  tr.appendChild(p);
  tr.appendChild(el("td", "", s.accession));
  tr.appendChild(el("td", "state " + s.state, s.state));
  const f = el("td");
  for (const [label, v] of Object.entries(s.findings)) {{
    const pr = v.probability === null ? "" : " " + v.probability.toFixed(2);
    f.appendChild(el("span", "chip" + (v.present ? " present" : ""), label + pr));
  }}
  if (!Object.keys(s.findings).length && s.reason) f.appendChild(el("span", "muted", s.reason));
  tr.appendChild(f);
  const d = el("td");
  for (const [dest, v] of Object.entries(s.deliveries)) {{
    d.appendChild(el("div", "dl " + v.state, dest + ": " + v.state));
  }}
  tr.appendChild(d);
  return tr;
}}
async function refresh() {{
  const q = new URLSearchParams({{limit: "200"}});
  const st = document.getElementById("state").value;
  const fi = document.getElementById("finding").value;
  if (st) q.append("state", st);
  if (fi) q.append("finding", fi);
  try {{
    const r = await fetch("/api/studies?" + q, {{credentials: "same-origin"}});
    if (r.status === 401) {{ location.href = "/login?next=/"; return; }}
    const body = await r.json();
    const tbody = document.querySelector("#worklist tbody");
    tbody.replaceChildren(...body.studies.map(row));
    document.getElementById("status").textContent =
      body.total + " studies, updated " + new Date().toLocaleTimeString();
  }} catch (e) {{
    document.getElementById("status").textContent = "node not reachable, retrying";
  }}
}}
document.getElementById("state").onchange = refresh;
document.getElementById("finding").onchange = refresh;
refresh();
setInterval(refresh, POLL_MS);
</script>
"""

_STUDY_SCRIPT: Final = """
<script>
const csrf = document.querySelector('meta[name="csrf-token"]').content;
for (const b of document.querySelectorAll("button[data-action]")) {
  b.onclick = async () => {
    b.disabled = true;
    const r = await fetch(b.dataset.action, {method: "POST", credentials: "same-origin",
                                             headers: {"X-CSRF-Token": csrf}});
    const body = await r.json().catch(() => ({}));
    document.getElementById("outcome").textContent = body.outcome || body.detail || r.status;
    setTimeout(() => location.reload(), 1500);
  };
}
</script>
"""


def _opts(values: tuple[str, ...]) -> str:
    return "".join(f'<option value="{v}">{v}</option>' for v in values)


@router.get("/", response_class=HTMLResponse)
def worklist(who: Who) -> HTMLResponse:
    body = _WORKLIST.format(states=_opts(STATES), findings=_opts(LABELS),
                            poll_ms=json.dumps(POLL_MS))  # fmt: skip
    return page("Worklist", body, user=who.name, csrf=who.csrf or "")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _rows(rows: list[list[Any]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)


def _table(head: list[str], rows: list[list[Any]], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{_rows(rows)}</tbody></table>"


def findings_in_words(d: dict[str, Any]) -> str:
    """``Present: any (p 0.93, threshold 0.50), epidural (...). Absent: ...``."""
    present = [k for k, v in d["findings"].items() if v["present"]]
    if not d["findings"]:
        return f"No result: {d['state']}" + (f" ({d['reason']})" if d["reason"] else "") + "."

    def part(label: str) -> str:
        v = d["findings"][label]
        thr = "" if v["threshold"] is None else f", threshold {v['threshold']:.2f}"
        return f"{label} (p {v['probability']:.2f}{thr})"

    absent = [k for k in d["findings"] if k not in present]
    words = "Present: " + ", ".join(map(part, present)) + ". " if present else (
        "No hemorrhage found by the model. ")  # fmt: skip
    return words + ("Absent: " + ", ".join(map(part, absent)) + "." if absent else "")


@router.get("/studies/{key}", response_class=HTMLResponse)
def study_page(key: str, ctx: Ctx, who: Who) -> HTMLResponse:
    src = source(ctx)
    try:
        d = src.detail(study_or_404(src, key))
    except HTTPException as exc:
        return page("Not found", f"<p>{_e(exc.detail)}</p>", user=who.name, status_code=404)
    chips = "".join(
        f'<span class="chip{" present" if v["present"] else ""}">{_e(k)} '
        f"{v['probability']:.2f}</span>"
        for k, v in d["findings"].items()
    )
    image = '<p class="muted">No result image.</p>'
    if d["image"]:
        image = (f'<img class="panel" id="key-image" alt="key slices and per-slice '
                 f'probabilities" src="{_e(d["image"])}">')  # fmt: skip
    series = _table(["series", "images", "outcome"], [
        [o["description"] or "(no description)", o["instances"],
         "used" if o["chosen"] else o["reason"] or "not chosen"] for o in d["series_choice"]
    ], "Series not chosen yet.")  # fmt: skip
    deliveries = _table(["destination", "state", "attempts", "last error", "updated"], [
        [k, v["state"], v["attempts"], v["last_error"] or "", v["updated"]]
        for k, v in d["deliveries"].items()
    ], "Nothing delivered yet.")  # fmt: skip
    timings = (d["result"] or {}).get("timings_s") or {}
    timing = _table(["stage", "seconds"], [[k, f"{v:.3f}"] for k, v in timings.items()],
                    "No timings stored.")  # fmt: skip
    audit = _table(["time", "user", "action", "outcome"], [
        [a["at"], a["user"], a["action"], a["outcome"]] for a in d["audit"]
    ], "No actions yet.")  # fmt: skip
    model = d["result"] or {}
    pat = d["patient"]
    body = f"""
<h2>{_e(pat["name"].replace("^", " "))} <span class="muted">{_e(pat["id"])}</span></h2>
<p>Accession {_e(d["accession"])} · arrival {_e(d["arrival"])} · {_e(d["description"])} ·
<span class="state {_e(d["state"])}">{_e(d["state"])}</span></p>
<p>{chips}</p>
<p id="findings-words">{_e(findings_in_words(d))}</p>
<p><button data-action="/api/studies/{_e(key)}/reprocess">Reprocess</button>
<button data-action="/api/studies/{_e(key)}/resend">Resend results</button>
<span id="outcome" class="muted"></span></p>
{image}
<div class="cols">
<section><h3>Series</h3>{series}</section>
<section><h3>Deliveries and notifications</h3>{deliveries}</section>
<section><h3>Timings</h3>{timing}
<p class="muted">model {_e(model.get("model_name"))} {_e(model.get("model_uid"))},
result rev {_e(model.get("generation"))}</p></section>
<section><h3>Audit trail</h3>{audit}</section>
</div>
{_STUDY_SCRIPT}"""
    return page(pat["name"] or "Study", body, user=who.name, csrf=who.csrf or "")

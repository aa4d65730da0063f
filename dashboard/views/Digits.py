"""My digits: the digits you labelled on Draw, as a gallery; export/import as an ImageFolder zip; fine-tune a model
on them and see the difference (core.digits, core.finetune)."""

from __future__ import annotations

import os

import lab
import pandas as pd
import streamlit as st

from core.config import ConfigError, TrainConfig
from core.data import DataError
from core.digits import HELD_OUT_EVERY, MAX_ZIP_BYTES, export_zip, import_zip
from core.finetune import before_after, finetunes, prepare_finetune
from core.identity import NotAllowed, owner_of
from core.launch import start_run
from core.ray_exec import RayError
from core.runs import Run, StoreError

GALLERY_COLUMNS = 10
GALLERY_MAX = 200  # the newest this many are shown


def gallery(rows: list[dict], owner: str | None) -> None:
    shown = sorted(rows[-GALLERY_MAX:], key=lambda r: (r["label"], r["id"]))
    if len(rows) > GALLERY_MAX:
        st.caption(f"The newest {GALLERY_MAX} of {len(rows)} shown; the zip holds them all.")
    for start in range(0, len(shown), GALLERY_COLUMNS):
        for col, r in zip(st.columns(GALLERY_COLUMNS), shown[start : start + GALLERY_COLUMNS], strict=False):
            col.image(r["reading"], width=56)
            read = f", read {r['read_as']}" if r["read_as"] is not None else ""
            col.caption(f"**{r['label']}** #{r['id']}{read}")
            if col.button("Delete", key=f"del-{r['id']}", type="tertiary", icon=":material/delete:"):
                lab.store().delete_digit(r["id"], owner)
                st.rerun()


def import_export(rows: list[dict], owner: str | None) -> None:
    c1, c2 = st.columns(2)
    c1.download_button("Download as a zip (ImageFolder: <digit>/<name>.png)", export_zip(lab.store().digits(owner)),
                       "my-digits.zip", mime="application/zip", key="export", disabled=not rows,
                       help="the original pictures, one folder per digit: torchvision.datasets.ImageFolder reads it, "
                            "and so does --extra-data once unzipped")
    n = st.session_state.get("import-n", 0)
    upload = c2.file_uploader("Import a zip of digit folders 0-9", type=["zip"], key=f"import-{n}",
                              max_upload_size=MAX_ZIP_BYTES // 2**20)
    if upload is not None and c2.button("Import", key="import-go"):
        try:
            added = import_zip(lab.store(), upload.getvalue(), owner)
        except (DataError, StoreError) as e:
            c2.error(f"{upload.name}: {e}")
            return
        st.session_state["import-n"] = n + 1  # a fresh, empty uploader
        st.session_state["imported"] = f"{added} pictures imported from {upload.name}"
        st.rerun()
    if "imported" in st.session_state:
        c2.success(st.session_state.pop("imported"))


def finetune_form(rows: list[dict], user) -> None:
    choices = [c for c in lab.trained_models() if not c.seed_recipe]
    if not choices:
        st.info(lab.NO_MODEL_HINT)
        return
    c1, c2, c3 = st.columns(3)
    start = c1.selectbox("Start from", choices, format_func=lambda c: c.label, key="ft-from",
                         index=lab.default_choice(choices))
    epochs = c2.number_input("Epochs", 1, 20, 2, key="ft-epochs")
    train_limit = c3.number_input("MNIST training images mixed with yours (0 = all 60,000)", 0, 60_000, 20_000,
                                  step=1000, key="ft-tl")
    st.caption(f"Your digits make {TrainConfig().extra_share:.0%} of every batch, turned and shifted like MNIST's; every {HELD_OUT_EVERY}th "
               "picture of each digit is held out to measure the difference. The run queues and trains like any "
               "other (watch it on Train).")
    if not st.button("Fine-tune on my digits", type="primary", key="ft-start", disabled=not rows):
        return
    init = f"run:{start.run_id}" if start.run_id else "reference"
    try:
        lab.mnist()  # refuse before recording a run that could not train
        config = prepare_finetune(lab.store(), lab.store().digits(owner_of(user)), start.model, init,
                                  epochs=int(epochs), train_limit=int(train_limit))
        run_id = start_run(lab.store(), config, data_root=os.environ.get("MNIST_ROOT"),
                           label=f"fine-tune on my digits from {init}", user=user)
    except (ConfigError, DataError, StoreError, RayError, NotAllowed) as e:
        st.error(str(e))
        return
    lab.remember_my_run(run_id)
    lab.forget_queue()  # the Train page's queue lists it at once
    st.session_state["ft-run"] = st.session_state["ft-show"] = run_id  # the results show the new run
    st.rerun()


@st.cache_resource(show_spinner="Measuring before and after...", max_entries=16)
def _before_after(run_id: int, ended_at: float, url: str) -> dict | None:
    store = lab.store()
    return before_after(store, store.get(run_id), lab.mnist())


def results(runs: list[Run]) -> None:
    by_id = {r.id: r for r in runs}
    wanted = st.session_state.get("ft-run")
    ids = list(by_id)
    run = by_id[st.selectbox("Fine-tune", ids, index=ids.index(wanted) if wanted in ids else 0, key="ft-show",
                             format_func=lambda i: lab.run_label(by_id[i]))]
    st.markdown(f"Run {run.id} ({run.status}): {run.model} from {run.config.init}, {run.config.epochs} epoch(s) · "
                f"[watch it on Train](Train?run={run.id})")
    if run.active:
        progress(run.id)
        return
    try:
        figures = _before_after(run.id, run.ended_at or 0.0, lab.store().url)
    except (StoreError, DataError, ConfigError) as e:
        st.error(str(e))
        return
    if figures is None:
        st.info(f"Run {run.id} is {run.status} without a checkpoint: nothing to compare.")
        return
    own = f"held-out own digits ({figures['held_out']})"
    table = pd.DataFrame([
        {"model": f"before: {run.config.init}", own: percent(figures["before"]["own"], 1),
         "MNIST test (10,000)": percent(figures["before"]["mnist"], 2)},
        {"model": f"after: run {run.id}'s best", own: percent(figures["after"]["own"], 1),
         "MNIST test (10,000)": percent(figures["after"]["mnist"], 2)},
    ]).set_index("model")
    st.table(table)
    st.caption(f"The new model is in the pickers of Draw, Inspect and Compare as {lab.run_label(run)}.")


def percent(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


@st.fragment(run_every=2.0)
def progress(run_id: int) -> None:
    run = lab.store().get(run_id)
    if not run.active:
        st.rerun()  # the whole page: the before/after table
    st.progress(run.progress, text=f"{run.status}: epoch {run.epoch}/{run.config.epochs}")


def main() -> None:
    st.title("My digits")
    user = lab.current_user()
    owner = owner_of(user)
    store = lab.store()
    rows = store.digits(owner, pictures=False)
    st.caption("The digits you labelled on Draw (**This is a ...**), kept in the run store. Download them as a zip, "
               "bring in a class's, and fine-tune a model on them.")
    counts = store.digit_counts(owner)
    st.dataframe(pd.DataFrame([{"digit": "pictures", **{str(d): n for d, n in counts.items()}, "all": len(rows)}]),
                 hide_index=True)
    if rows:
        gallery(rows, owner)
    else:
        st.info("No digits yet: draw one on **Draw** and press **This is a ...** under the reading, or import a zip.")
    st.subheader("Export and import")
    import_export(rows, owner)
    st.subheader("Fine-tune on my digits")
    finetune_form(rows, user)
    mine = finetunes(store.list_runs(limit=lab.NEWEST_RUNS, owner=owner))
    if mine:
        st.subheader("Before and after")
        results(mine)


main()

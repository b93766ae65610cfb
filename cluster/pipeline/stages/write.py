"""Write: the folder in the design card's layout, swapped in atomically (images, report, scores,
comparison, gallery). When the guard is already writing the partial report from the journal (a
second signal, a lost cluster), the run leaves it that (cluster.output.durability.guard). A run
that made every planned image drops its journal; an unfinished one keeps it, so running the same
request again makes only what is missing."""

from __future__ import annotations

from cluster.errors import ImageGenError
from cluster.output.gallery import render_gallery
from cluster.output.writer import write_run
from cluster.pipeline.state import RunState


def write(state: RunState) -> RunState:
    guard, outcome = state.context.guard, state.outcome
    if guard is not None and not guard.claim():
        guard.stand_aside()  # the guard is writing the report from the journal
    try:
        state.written = write_run(outcome, gallery=render_gallery, durable=state.context.durable_folder)
    except OSError as exc:
        raise ImageGenError("IMG_005", f"writing {state.request.folder_name} failed ({exc.strerror or exc}); "
                                       "temporary files were removed.") from None
    finally:
        if guard is not None:
            guard.release()
    if len(outcome.images) >= outcome.planned_total:
        state.journal.discard()
    else:
        state.journal.close()
    return state

"""Shared classifier fixtures: a small real model trained once per session, and real digit images."""
import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings
from PIL import Image, ImageDraw

from training.ml.architectures import build_model
from training.ml.checkpoints import save_checkpoint
from training.ml.data import load_split
from training.ml.engine import evaluate, train_one_epoch

DATA_DIR = Path(settings.DATA_DIR)


@pytest.fixture(scope="session")
def mnist_test_split():
    return load_split(DATA_DIR, split="test")


@pytest.fixture(scope="session")
def trained_model_file(tmp_path_factory) -> Path:
    """An MLP trained for one epoch on 6,000 real MNIST images (about a second on two cores)."""
    torch.manual_seed(0)
    train = load_split(DATA_DIR, split="train").subset(6000)
    test = load_split(DATA_DIR, split="test").subset(1000)
    model = build_model("mlp", {"hidden": 128})
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(2):
        train_one_epoch(
            model=model, optimizer=optimizer, scheduler=None, images=train.images, labels=train.labels,
            batch_size=64, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), augment=False,
        )
    accuracy = evaluate(model=model, images=test.images, labels=test.labels, device=torch.device("cpu")).accuracy
    assert accuracy > 0.85, f"the fixture model is too weak ({accuracy:.2%})"
    path = tmp_path_factory.mktemp("models") / "trained.pt"
    save_checkpoint(path, model=model, config=None, epoch=2, metrics={"test_accuracy": accuracy})
    return path


@pytest.fixture(scope="session")
def always_seven_model_file(tmp_path_factory) -> Path:
    """A model that answers 7 for every input: proof of which checkpoint a worker really used."""
    model = build_model("mlp", {"hidden": 8})
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.net[-1].bias[7] = 10.0
    path = tmp_path_factory.mktemp("models") / "seven.pt"
    save_checkpoint(path, model=model, config=None, epoch=1, metrics={})
    return path


@pytest.fixture
def register_checkpoint(db, isolated_storage):
    from training.services import checkpoint_activate, checkpoint_register

    def register(source: Path, *, name: str, activate: bool = True, accuracy: float | None = 0.9):
        target = Path(settings.CHECKPOINT_DIR) / f"{name}.pt"
        shutil.copyfile(source, target)
        checkpoint = checkpoint_register(
            path=target, run=None, epoch=1, test_accuracy=accuracy, architecture="mlp", activate=False
        )
        return checkpoint_activate(checkpoint=checkpoint) if activate else checkpoint

    return register


@pytest.fixture
def active_checkpoint(register_checkpoint, trained_model_file):
    return register_checkpoint(trained_model_file, name="trained")


@pytest.fixture(autouse=True)
def fresh_model_cache():
    """Each test starts with an empty per-process model cache, as a new worker would."""
    from classifier import inference

    inference._cached = None
    yield
    inference._cached = None


def png_bytes(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


@pytest.fixture
def mnist_image(mnist_test_split):
    """A real MNIST test digit, scaled up like a photo, with its label."""

    def make(index: int = 0, *, size: int = 112, invert: bool = True) -> tuple[Image.Image, int]:
        pixels = mnist_test_split.images[index].numpy()
        if invert:
            pixels = 255 - pixels  # dark ink on white paper, like most photos and scans
        image = Image.fromarray(pixels.astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
        return image, int(mnist_test_split.labels[index])

    return make


@pytest.fixture
def digit_png(mnist_image):
    def make(index: int = 0, **kwargs) -> bytes:
        image, _label = mnist_image(index, **kwargs)
        return png_bytes(image)

    return make


def empty_ruled_sheet_png() -> bytes:
    """A photographed sheet of ruled paper with nothing written on it."""
    sheet = Image.new("L", (400, 400), 235)
    for row in range(15, 400, 40):
        ImageDraw.Draw(sheet).rectangle([0, row, 399, row + 1], fill=195)
    noisy = np.asarray(sheet, dtype=np.float64) + np.random.default_rng(0).normal(0.0, 2.0, (400, 400))
    return png_bytes(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)))


def stored_size(data: bytes, name: str = "digit.png") -> int:
    """The bytes an accepted upload takes once stored (its clean PNG), which the upload quota counts."""
    from classifier.validation import validate_image

    return len(validate_image(io.BytesIO(data), name=name).content)


@contextlib.contextmanager
def uploads_stored_answer_lost(*, before_read_back):
    """The uploads' insert commits and its answer is lost; asked, the database says they are stored; then
    ``before_read_back()`` runs just before the read of their predictions (raising, it stands for that read).
    """
    from django.db import OperationalError, connection

    from classifier.models import Prediction, Upload

    state = {"inserting": False, "stored": False, "read_back": False}
    commit = connection._commit

    def lost() -> OperationalError:
        state["stored"] = True
        return OperationalError("server closed the connection unexpectedly")

    def lose(execute, sql, params, many, context):
        reading_back = sql.startswith("SELECT") and f'FROM "{Prediction._meta.db_table}"' in sql
        if state["stored"] and not state["read_back"] and reading_back:
            state["read_back"] = True
            before_read_back()
        result = execute(sql, params, many, context)
        if not state["inserting"] and "INSERT INTO" in sql and Upload._meta.db_table in sql:
            state["inserting"] = True
            # A statement committed by itself loses its own answer; one in a transaction, its commit's.
            if not connection.in_atomic_block:
                raise lost()
        return result

    def commit_then_lose():
        commit()
        if state["inserting"] and not state["stored"]:
            raise lost()

    connection._commit = commit_then_lose
    try:
        with connection.execute_wrapper(lose):
            yield
    finally:
        del connection._commit
    assert state["read_back"], "the stored uploads were never read back"


def uploads_stored_then_read_back_lost():
    """As ``uploads_stored_answer_lost``, the read of their predictions losing the connection again.

    The second loss is the one that matters: after it the request knows the uploads are stored but cannot say which
    predictions they are.
    """
    from django.db import OperationalError

    def lose_again() -> None:
        raise OperationalError("server closed the connection unexpectedly")

    return uploads_stored_answer_lost(before_read_back=lose_again)


def deletions_race(*, held, other, held_stops_after_locking: bool = False) -> dict:
    """Run the deletions ``held`` and ``other`` at once, each in a thread with its own connection; their results (or
    the DatabaseError each raised) by name.

    ``held`` stops just before it deletes upload rows (``held_stops_after_locking``: just after its first statement
    locking uploads), with whatever it locked or deleted so far, until ``other`` has taken its row locks: two
    deletions that lock in different orders deadlock there. When ``other`` rightly waits for ``held``'s locks
    instead, ``held`` goes on after 2 s.
    """
    import threading

    from django.db import DatabaseError, connection

    from classifier.models import Upload

    held_began, other_locked, outcome = threading.Event(), threading.Event(), {}
    table = f'"{Upload._meta.db_table}"'

    def stop() -> None:
        if not held_began.is_set():
            held_began.set()
            other_locked.wait(2)

    def hold(execute, sql, params, many, context):
        if not held_stops_after_locking and sql.startswith(f"DELETE FROM {table}"):
            stop()
        result = execute(sql, params, many, context)
        if held_stops_after_locking and f"FROM {table}" in sql and "FOR UPDATE" in sql:
            stop()
        return result

    def note_locks(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "FOR UPDATE" in sql:
            other_locked.set()
        return result

    def run(name, wrapper, delete):
        try:
            with connection.execute_wrapper(wrapper):
                outcome[name] = delete()
        except DatabaseError as exc:
            outcome[name] = exc
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run, args=("held", hold, held)),
        threading.Thread(target=run, args=("other", note_locks, lambda: held_began.wait(5) and other())),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcome


def retry_overtaken(*, upload_id: int, send):
    """Runs ``send`` (a retry of one of the upload's predictions) while another tab's retry, its prediction made,
    holds the upload's lock, and commits that one once ``send`` waits for the lock; returns what ``send`` returned.

    Needs PostgreSQL, whose pg_locks shows the wait, and a transactional database: both run in threads of their own.
    """
    from classifier.models import Upload
    from classifier.services import predictions_rerun
    from tests.locks import overtaken

    (answer,) = overtaken(first=lambda: predictions_rerun(uploads=[Upload.objects.get(pk=upload_id)], publish=False),
                          then=[send])
    return answer


def account_deleted_just_before_the_insert(user):
    """An execute wrapper: the owner's account is deleted, and committed, just before their uploads' rows go in."""
    from accounts.services import account_delete
    from classifier.models import Upload

    deleted = []

    def delete_first(execute, sql, params, many, context):
        # The first statement of the insert: its transaction's BEGIN on SQLite, the insert itself on PostgreSQL.
        if not deleted and (sql.startswith("BEGIN") or Upload._meta.db_table in sql):
            deleted.append(True)
            account_delete(user=user)
        return execute(sql, params, many, context)

    return delete_first, deleted


def upload_deletions_lost_in_the_second_batch(batches: list):
    """A database wrapper (``connection.execute_wrapper``) whose connection is lost as the second batch of upload
    deletions is sent; the batches sent are added to ``batches``."""
    from django.db import OperationalError

    def connection_lost(execute, sql, params, many, context):
        if sql.startswith('DELETE FROM "classifier_upload"'):
            batches.append(sql)
            if len(batches) == 2:
                raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    return connection_lost

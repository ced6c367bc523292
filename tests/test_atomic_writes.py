"""Every file the pipeline writes goes through a temporary file and a rename (plantlib.io / atomic_path)."""

import textwrap
from pathlib import Path

import pytest

from plantlib.io import atomic_write, remove_stale_temporaries, write_json
from tests.helpers.write_scan import scan_folders, scan_source

ROOT = Path(__file__).resolve().parents[1]
# Writes that are in place on purpose, by (file, function), with the reason.
EXEMPT = {
    ("plantlib/reporting/runner.py", "_stderr_to"): "a notebook kernel's stderr, appended to its log while it runs",
    ("plantlib/reporting/index.py", "_locked"): "the report lock file, opened only to hold an flock; never written",
    ("plantlib/experiments/cv.py", "_fold_log"): "a fold's training log, appended line by line while the fold runs",
}


def test_no_module_writes_a_file_in_place() -> None:
    findings = scan_folders(ROOT, ["plantlib", "benchmarks"])
    offenders = [str(f) for f in findings if (f.file, f.function) not in EXEMPT]
    assert offenders == [], "write through plantlib.io (atomic_write / atomic_path / write_json):\n" + "\n".join(
        offenders
    )
    assert {(f.file, f.function) for f in findings} == set(EXEMPT)  # every exemption is still needed


IN_PLACE = {
    "pillow save": "image.save(out_dir / 'x.png')",
    "save of a chained call": "Image.fromarray(pixels).save(path, quality=90)",
    "open over several lines": """
        with open(
            target,
            "w",
            encoding="utf-8",
        ) as handle:
            handle.write(text)
    """,
    "open to append, no with": "log = open(path, mode='a')",
    "Path.open": "with path.open('wb') as handle:\n    handle.write(data)",
    "write_text on a name that only looks temporary": "tmp = target.with_suffix('.tmp')\ntmp.write_text(text)",
    "write_bytes beside a comment about handles": "path.write_bytes(data)  # handle tmp buffer",
    "torch.save": "torch.save(state, run_dir / 'last.pt')",
    "np.save": "np.save(path, array)",
    "to_csv": "frame.to_csv(path, index=False)",
    "to_json": "frame.to_json(path_or_buf=path)",
    "savefig": "fig.savefig(path, dpi=120)",
    "json.dump into a file": "with open(path, 'w') as fh:\n    json.dump(payload, fh)",
    "shutil.copy": "shutil.copyfile(source, target)",
    "the target, not the temporary": "with atomic_path(target) as tmp:\n    image.save(target)",
    "a temporary rebound to the target": """
        with atomic_path(target) as tmp:
            tmp = target
            tmp.write_text(text)
    """,
    "a helper called with the real path once": """
        def _store(path, data):
            path.write_bytes(data)

        with atomic_path(target) as tmp:
            _store(tmp, data)
        _store(target, data)
    """,
    "a helper handed on elsewhere": """
        def _store(path, data):
            path.write_bytes(data)

        with atomic_path(target) as tmp:
            _store(tmp, data)
        callbacks.append(_store)
    """,
    "os.open for writing": "fd = os.open(path, os.O_WRONLY | os.O_CREAT)",
    "a temporary directory that is not private": "folder = Path('/tmp')\n(folder / 'x.json').write_text(text)",
}
ATOMIC = {
    "atomic_path": "with atomic_path(target) as tmp:\n    image.save(tmp, format='PNG')",
    "a handle on the temporary": """
        with atomic_path(target) as tmp, open(tmp, "w") as handle:
            json.dump(payload, handle)
    """,
    "atomic_write with a lambda": "atomic_write(path, lambda handle: frame.to_csv(handle, index=False))",
    "atomic_write with a function": """
        def write(handle):
            json.dump(payload, handle)

        atomic_write(path, write)
    """,
    "a helper only ever given the temporary": """
        class Reader:
            def read(self, target):
                with atomic_path(target) as tmp:
                    self._copy_to(location, tmp)

            def _copy_to(self, location, tmp):
                shutil.copyfile(location, tmp)
                tmp.write_bytes(content)
    """,
    "in memory": "buffer = io.BytesIO()\nfig.savefig(buffer, format='png')\nimage.save(buffer, format='JPEG')",
    "a string, not a file": "text = frame.to_csv(index=False)",
    "reading": "with open(path) as a, open(path, 'rb') as b, Image.open(path) as c:\n    pass",
    "a private temporary directory": """
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "upload.jpg"
            path.write_bytes(data)
            torch.onnx.export(model, (example,), str(Path(folder) / "m.onnx"))
    """,
    "written beside and renamed into place": """
        partial = output.with_name("." + output.name + ".partial")
        papermill.execute_notebook(source, str(partial))
        os.replace(partial, output)
    """,
    "a plantlib method on an annotated parameter": """
        class RunConfig:
            def to_json(self, path):
                write_json(path, self.to_dict())

        def launch(config: RunConfig, folder):
            config.to_json(folder / "config.json")
    """,
}


@pytest.mark.parametrize("snippet", IN_PLACE.values(), ids=IN_PLACE.keys())
def test_the_scan_catches_an_in_place_write(snippet: str) -> None:
    assert len(scan_source(textwrap.dedent(snippet))) >= 1


@pytest.mark.parametrize("snippet", ATOMIC.values(), ids=ATOMIC.keys())
def test_the_scan_accepts_atomic_and_private_writes(snippet: str) -> None:
    assert scan_source(textwrap.dedent(snippet)) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "history.json"
    write_json(target, [{"epoch": 1}])

    def crash(handle) -> None:
        handle.write('[{"epoch": 2')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == '[\n  {\n    "epoch": 1\n  }\n]'
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".x.jpg.k3j.tmp").write_bytes(b"partial")
    (tmp_path / "a" / "x.jpg").write_bytes(b"whole")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.jpg"]

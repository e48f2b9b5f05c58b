import json

import numpy as np
from imagegen import COLOURS, encode, square_image

from beam_jobs import predict as beam_predict
from export.cli.predict import main as xfer_predict


def images_folder(root):
    rng = np.random.default_rng(11)
    for i, colour in enumerate(["red", "green", "blue", "red", "green"]):
        (root / "in" / "sub").mkdir(parents=True, exist_ok=True)
        folder = root / "in" / ("sub" if i % 2 else "")
        (folder / f"{i}_{colour}.png").write_bytes(
            encode(square_image(COLOURS[colour], 48, rng), "PNG")
        )
    (root / "in" / "bad.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "in" / "notes.md").write_text("not an image extension: never read")
    return root / "in"


def read_jsonl(folder, prefix):
    return [
        json.loads(line)
        for p in sorted(folder.glob(f"{prefix}-*.jsonl"))
        for line in p.read_text().splitlines()
    ]


def test_beam_predict_equals_xfer_predict(exported, tmp_path, capsys):
    source = images_folder(tmp_path)
    out = tmp_path / "out"
    beam_predict.run(
        [
            "--input",
            str(source),
            "--model_dir",
            str(exported.path.parent),
            "--version",
            "1",
            "--output",
            str(out),
            "--top_k",
            "3",
        ]
    )
    rows = {r["uri"]: r for r in read_jsonl(out, "predictions")}
    errors = read_jsonl(out, "errors")
    assert len(rows) == 5
    assert [e["uri"] for e in errors] == [str(source / "bad.jpg")]
    assert errors[0]["error"].startswith("not a decodable image: Invalid JPEG data")

    capsys.readouterr()
    assert (
        xfer_predict(["--model-dir", str(exported.path), "--json", "--top-k", "3", *sorted(rows)])
        == 0
    )
    for line in capsys.readouterr().out.strip().splitlines():
        expected = json.loads(line)
        row = rows[expected["uri"]]
        assert row["model_version"] == 1
        # the OOD outputs, in xfer-predict's JSON and in the Beam job's rows alike
        assert row["is_ood"] == expected["is_ood"]
        np.testing.assert_allclose(row["ood_score"], expected["ood_score"], rtol=1e-5)
        assert row["labels"] == [label for label, _ in expected["top"]]
        np.testing.assert_allclose(row["scores"], [s for _, s in expected["top"]], atol=1e-5)
    # The colour in each file name is the class the model should find.
    assert all(r["labels"][0] == uri.rsplit("_", 1)[1][:-4] for uri, r in rows.items())

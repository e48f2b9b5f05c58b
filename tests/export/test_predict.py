import json

import numpy as np
from imagegen import COLOURS, encode, square_image

from export.cli.predict import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, main


def write_images(tmp_path):
    rng = np.random.default_rng(3)
    paths = {}
    for colour in ("red", "green"):
        paths[colour] = tmp_path / f"{colour}.jpg"
        paths[colour].write_bytes(encode(square_image(COLOURS[colour], 48, rng), "JPEG"))
    paths["bad"] = tmp_path / "bad.jpg"
    paths["bad"].write_bytes(b"\xff\xd8\xff garbage")
    return paths


def test_predict_good_images_text_output(exported, tmp_path, capsys):
    paths = write_images(tmp_path)
    code = main(
        [
            "--model-dir",
            str(exported.path.parent),
            "--version",
            "1",
            str(paths["red"]),
            str(paths["green"]),
        ]
    )
    assert code == EXIT_OK
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{paths['red']}: red ")
    assert lines[1].startswith(f"{paths['green']}: green ")


def test_predict_bad_image_gets_an_error_line_others_still_predicted(exported, tmp_path, capsys):
    paths = write_images(tmp_path)
    code = main(
        [
            "--model-dir",
            str(exported.path),
            "--json",
            "--top-k",
            "2",
            str(paths["red"]),
            str(paths["bad"]),
            str(tmp_path / "missing.png"),
            str(paths["green"]),
        ]
    )
    assert code == EXIT_SOME_FAILED
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["uri"] for r in rows] == [
        str(paths["red"]),
        str(paths["bad"]),
        str(tmp_path / "missing.png"),
        str(paths["green"]),
    ]
    assert rows[0]["top"][0][0] == "red" and len(rows[0]["top"]) == 2
    # the names xfer-score's rows use, beside the original ones
    assert rows[0]["labels"] == [name for name, _ in rows[0]["top"]]
    assert rows[0]["scores"] == [score for _, score in rows[0]["top"]]
    assert rows[0]["model_version"] == rows[0]["version"] == int(exported.path.name)
    assert rows[1]["error"].startswith("not a decodable image: Invalid JPEG data")
    assert rows[2]["error"] == "unreadable: No such file or directory"
    assert rows[3]["top"][0][0] == "green"


def test_predict_usage_errors(tmp_path, exported, capsys):
    assert main(["--model-dir", str(tmp_path), "x.jpg"]) == EXIT_USAGE
    assert main(["--model-dir", str(exported.path.parent), "--version", "99", "x.jpg"]) == 2

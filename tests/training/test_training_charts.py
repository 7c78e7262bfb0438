"""The server-side SVG charts are well-formed, escape their text and cope with missing data."""
import re
import xml.etree.ElementTree as ET

from training.charts import confusion_matrix_svg, line_chart_svg, run_curves_svg


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_a_line_chart_draws_one_polyline_per_series_with_several_points():
    svg = line_chart_svg(series={"train": [1.0, 0.5, 0.25], "test": [1.2, 0.6, 0.4]}, title="Loss")
    root = _parse(svg)
    assert len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 2
    assert len(root.findall(".//{http://www.w3.org/2000/svg}circle")) == 6


def test_a_single_epoch_chart_shows_points_without_lines():
    root = _parse(line_chart_svg(series={"acc": [0.9]}, title="Accuracy"))
    assert not root.findall(".//{http://www.w3.org/2000/svg}polyline")
    assert len(root.findall(".//{http://www.w3.org/2000/svg}circle")) == 1


def test_a_chart_without_data_says_so():
    assert "no data yet" in line_chart_svg(series={"loss": []}, title="Loss")


def test_chart_text_is_escaped():
    svg = line_chart_svg(series={"<script>": [1, 2]}, title="a & <b>")
    _parse(svg)
    assert "<script>" not in svg and "a &amp; &lt;b&gt;" in svg


def test_the_confusion_matrix_has_a_cell_per_pair_with_counts_in_tooltips():
    matrix = [[5 if i == j else i for j in range(10)] for i in range(10)]
    root = _parse(confusion_matrix_svg(matrix=matrix))
    cells = root.findall(".//{http://www.w3.org/2000/svg}rect")
    assert len(cells) == 100
    assert cells[3 * 10 + 4].find("{http://www.w3.org/2000/svg}title").text == "true 3, predicted 4: 3"


def test_each_count_of_the_confusion_matrix_contrasts_with_its_cell_at_least_as_wcag_asks_of_small_text():
    from training.charts import _luminance

    # Every share of its row from 0 to 1, right answers (the diagonal) and mistakes alike.
    matrix = [[(share if i == j else 100 - share) if j in (i, (i + 1) % 10) else 0 for j in range(10)]
              for i, share in enumerate(range(0, 100, 10))]
    root = _parse(confusion_matrix_svg(matrix=matrix))
    svg = "{http://www.w3.org/2000/svg}"
    cells = {(float(rect.get("x")), float(rect.get("y"))): rect for rect in root.iter(f"{svg}rect")}
    for text in root.iter(f"{svg}text"):
        if text.get("fill") is None:
            continue  # the axes' labels, on white
        rect = cells[(float(text.get("x")) - 15, float(text.get("y")) - 18)]
        opacity, rgb = float(rect.get("fill-opacity")), [int(c) for c in re.findall(r"\d+", rect.get("fill"))]
        fill = _luminance([opacity * c + (1 - opacity) * 255 for c in rgb])
        ink = _luminance([255] * 3 if text.get("fill") == "#fff" else [0] * 3)
        contrast = (max(fill, ink) + 0.05) / (min(fill, ink) + 0.05)
        assert contrast >= 4.5, (text.text, rect.get("fill"), opacity, text.get("fill"))


def test_run_curves_plot_training_against_the_validation_set():
    rows = [{"train_loss": 1, "validation_loss": 2, "train_accuracy": 0.5, "validation_accuracy": 0.6}]
    curves = run_curves_svg(metrics=rows)
    legends = {key: [t.text for t in _parse(svg).iter("{http://www.w3.org/2000/svg}text")] for key, svg in curves.items()}
    assert "validation accuracy" in legends["accuracy"] and "validation loss" in legends["loss"]
    assert not any("test" in text for texts in legends.values() for text in texts if text)
    # The legend's longest name ends inside the chart, not past its right edge.
    [label] = [t for t in _parse(curves["accuracy"]).iter("{http://www.w3.org/2000/svg}text") if t.text == "validation accuracy"]
    assert float(label.get("x")) + 6.2 * len(label.text) <= 420


def test_run_curves_of_a_run_from_before_the_validation_split_plot_its_test_set():
    curves = run_curves_svg(metrics=[{"train_loss": 1, "test_loss": 2, "train_accuracy": 0.5, "test_accuracy": 0.6}])
    assert "test accuracy" in curves["accuracy"] and "test loss" in curves["loss"]


def test_run_curves_use_the_per_epoch_metrics():
    curves = run_curves_svg(metrics=[{"train_loss": 1, "test_loss": 2, "train_accuracy": 0.5, "test_accuracy": 0.6}])
    assert set(curves) == {"loss", "accuracy"}
    for svg in curves.values():
        _parse(svg)

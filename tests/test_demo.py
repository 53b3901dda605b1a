"""make demo's job runs end to end on the embedded digits data."""

from torchqv import demo


def test_demo_reports_nearest_and_qubo(capsys):
    rows = demo.main(["--bits", "4", "--epochs", "10"])
    assert [r["bits"] for r in rows] == [4]
    assert rows[0]["reference_match"]
    assert 0.5 < rows[0]["nearest"] <= 1 and 0.5 < rows[0]["qubo"] <= 1
    assert "QUBO rounding" in capsys.readouterr().out

"""The quality calibration is built once, then refreshed off the recall path only when
the library has changed (its scan costs ~56 ms at 100k experiences)."""

from __future__ import annotations

from fai_net.api.recall import Recall


class Library:
    def __init__(self) -> None:
        self.version = 1
        self.scans = 0
        self.rows = [(b"s" * 32, 0.2), (b"s" * 32, 0.8)]

    def claims(self):
        self.scans += 1
        return list(self.rows)


def test_calibration_is_rebuilt_only_when_the_library_changed(tmp_path):
    from fai_net.api.outcome_book import OutcomeBook

    library = Library()
    recall = Recall(library, OutcomeBook(tmp_path / "o.sqlite"), lambda key: None)
    first = recall.calibration()
    assert library.scans == 1 and recall.calibration() is first  # cached for recalls
    assert recall.refresh_calibration() is False and library.scans == 1  # unchanged
    library.version = 2
    library.rows.append((b"s" * 32, 0.99))
    assert recall.refresh_calibration() is True and library.scans == 2
    fresh = recall.calibration()
    assert fresh is not first
    # 0.8 was the top claim of two; now a 0.99 sits above it
    assert fresh.calibrated(b"s" * 32, 0.8) < first.calibrated(b"s" * 32, 0.8)

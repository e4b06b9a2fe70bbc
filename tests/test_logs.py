"""Known noise of the pinned libraries is hidden from the console; every other warning still shows."""

from __future__ import annotations

import warnings

from fhi_al.logs import KNOWN_NOISE, quiet_known_warnings


def test_known_library_noise_is_hidden_and_other_warnings_show():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        for text in KNOWN_NOISE:
            warnings.warn(f"{text} and more words", UserWarning)
        warnings.warn("The TorchScript compiler found a real problem", UserWarning)
        warnings.warn("Langevin: invalid value encountered", RuntimeWarning)
    assert [str(w.message) for w in caught] == ["The TorchScript compiler found a real problem",
                                                "Langevin: invalid value encountered"]

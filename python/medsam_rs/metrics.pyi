from typing import Any, Tuple

import numpy.typing as npt

def dice(gt: npt.NDArray[Any], pred: npt.NDArray[Any]) -> float: ...
def iou(gt: npt.NDArray[Any], pred: npt.NDArray[Any]) -> float: ...
def nsd(
    gt: npt.NDArray[Any],
    pred: npt.NDArray[Any],
    spacing: Tuple[float, float] = (1.0, 1.0),
    tolerance: float = 2.0,
) -> float: ...

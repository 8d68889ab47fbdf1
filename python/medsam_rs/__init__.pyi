"""Type stubs of medsam_rs (the compiled module is medsam_rs._native)."""
from os import PathLike
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import metrics as metrics

_Path = Union[str, "PathLike[str]"]
_Array = npt.NDArray[Any]

__version__: str

class MedsamError(Exception): ...
class InvalidArgumentError(MedsamError, ValueError): ...
class MedsamFileNotFoundError(MedsamError, FileNotFoundError): ...

class Predictor:
    """SamPredictor-shaped inference over a SAM/MedSAM or LiteMedSAM checkpoint."""

    def __init__(
        self,
        checkpoint: _Path,
        model_type: Optional[Literal["vit_b", "vit_l", "vit_h", "lite"]] = None,
        config: Optional[_Path] = None,
        device: str = "cpu",
        precision: Literal["f32", "bf16", "int8"] = "f32",
        transform: Optional[Literal["medsam", "sam", "lite"]] = None,
    ) -> None: ...
    def set_image(self, image: _Array, image_format: Literal["RGB", "BGR"] = "RGB") -> None:
        """(H, W, 3) or (H, W); uint8 0-255, or float32/float64 in [0, 1]."""
    def predict(
        self,
        point_coords: Optional[_Array] = None,
        point_labels: Optional[_Array] = None,
        box: Optional[_Array] = None,
        multimask_output: bool = False,
    ) -> Tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(masks [N,]C×H×W, iou_predictions [N,]C, low_res_logits [N,]C×4g×4g)."""
    def get_image_embedding(self) -> npt.NDArray[np.float32]: ...
    def reset_image(self) -> None: ...
    @property
    def is_image_set(self) -> bool: ...
    @property
    def original_size(self) -> Optional[Tuple[int, int]]: ...
    @property
    def input_size(self) -> Optional[Tuple[int, int]]: ...
    @property
    def img_size(self) -> int: ...
    @property
    def model_family(self) -> Literal["sam", "lite"]: ...
    @property
    def transform(self) -> Literal["medsam", "sam", "lite"]: ...

class InferenceState:
    """SAM2VideoPredictor's inference_state: frames, prompts and results of one video/volume."""

    @property
    def num_frames(self) -> int: ...
    @property
    def video_size(self) -> Tuple[int, int]: ...
    @property
    def obj_ids(self) -> List[int]: ...

_Masks = npt.NDArray[np.float32]

class VideoPredictor:
    """SAM2VideoPredictor-shaped tracking over a SAM 2.1 / MedSAM2 checkpoint."""

    def __init__(
        self,
        checkpoint: _Path,
        config: Optional[_Path] = None,
        image_size: Optional[int] = None,
        device: str = "cpu",
        fill_hole_area: int = 8,
        precision: Literal["f32", "bf16", "int8"] = "f32",
    ) -> None: ...
    @property
    def image_size(self) -> int: ...
    @property
    def fill_hole_area(self) -> int: ...
    @property
    def precision(self) -> Literal["f32", "bf16", "int8"]: ...
    def init_state(
        self, frames: _Array, video_size: Optional[Tuple[int, int]] = None
    ) -> InferenceState:
        """uint8 (N, H, W) / (N, H, W, 3), or preprocessed float32 (N, 3, S, S) + video_size."""
    def add_new_points_or_box(
        self,
        state: InferenceState,
        frame_idx: int,
        obj_id: int,
        points: Optional[_Array] = None,
        labels: Optional[_Array] = None,
        box: Optional[_Array] = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
    ) -> Tuple[int, List[int], _Masks]:
        """(frame_idx, obj_ids, logits (n_obj, 1, H, W))."""
    def propagate_in_video(
        self,
        state: InferenceState,
        start_frame_idx: Optional[int] = None,
        max_frame_num_to_track: Optional[int] = None,
        reverse: bool = False,
        callback: Optional[Callable[[int, List[int], _Masks], Any]] = None,
    ) -> List[Tuple[int, List[int], _Masks]]: ...
    def reset_state(self, state: InferenceState) -> None: ...
    def segment_volume(
        self,
        volume: _Array,
        boxes: _Array,
        key_slices: Optional[List[int]] = None,
        window: Optional[Tuple[float, float]] = None,
        keep_largest_cc: bool = True,
        progress: Optional[Callable[[int, int], Any]] = None,
    ) -> npt.NDArray[np.uint8]:
        """MedSAM2's 3D recipe; (D, H, W) uint8 labels 1..N."""

def segment_volume(
    predictor: Predictor,
    volume: npt.NDArray[np.uint8],
    boxes: _Array,
    progress: Optional[Callable[[int, int], Any]] = None,
) -> npt.NDArray[np.uint8]:
    """MedSAM_infer_npz_3D with a LiteMedSAM predictor, each slice encoded at its precision."""
def normalize_ct_mr(
    volume: _Array,
    modality: Literal["CT", "MR"] = "CT",
    window_level: float = 40.0,
    window_width: float = 400.0,
) -> npt.NDArray[np.uint8]: ...
def preprocess_ct_mr(
    nii_path: _Path,
    gt_path: _Path,
    npy_path: _Path,
    modality: Literal["CT", "MR"] = "CT",
    anatomy: str = "Abd",
    img_name_suffix: str = "_0000.nii.gz",
    gt_name_suffix: str = ".nii.gz",
    remove_label_ids: List[int] = ...,
    tumor_id: Optional[int] = None,
    window_level: float = 40.0,
    window_width: float = 400.0,
    image_size: int = 1024,
    voxel_num_thre2d: int = 100,
    voxel_num_thre3d: int = 1000,
    num_workers: int = 4,
    progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
) -> Dict[str, Any]: ...
def load_checkpoint(path: _Path) -> Any: ...
def save_checkpoint(path: _Path, obj: Any) -> None: ...
def train(
    config: Mapping[str, Any],
    progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
) -> Dict[str, Any]: ...

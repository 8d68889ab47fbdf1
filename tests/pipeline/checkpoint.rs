//! Checkpoint I/O tests against fixtures produced by real torch
//! (tests/fixtures/make_ckpt_fixtures.py) and, when `MEDSAM_PYTHON` points to
//! a python with torch, against torch.load(weights_only=True) on files written
//! here.

use crate::common::json_numbers;
use crate::common::process;
use process::success_stdout;
use std::path::{Path, PathBuf};

use medsam::checkpoint::pth::{load_pth_with_limits, Limits};
use medsam::checkpoint::{
    convert, load_pth, load_safetensors, save_pth, save_safetensors, state_dict_from,
    CheckpointError, DType, OutputFormat, TensorData, Value,
};
use serde_json::Value as Json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ckpt")
        .join(name)
}

fn expected() -> Json {
    let s = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam-ckpt-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Exact element values as f64 (every supported dtype converts exactly).
fn values_f64(t: &TensorData) -> Vec<f64> {
    let b = &t.bytes;
    match t.dtype {
        DType::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DType::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        _ => t.to_f32().unwrap().into_iter().map(f64::from).collect(),
    }
}

fn assert_tensor_matches(what: &str, t: &TensorData, e: &Json) {
    assert_eq!(
        format!("{:?}", t.dtype),
        e["dtype"].as_str().unwrap(),
        "{what}: dtype"
    );
    assert_eq!(t.shape, json_numbers::usizes(&e["shape"]), "{what}: shape");
    assert_eq!(
        t.bytes.len(),
        t.numel() * t.dtype.size(),
        "{what}: byte length"
    );
    let want: Vec<f64> = e["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().parse::<f64>().unwrap())
        .collect();
    let got = values_f64(t);
    assert_eq!(got.len(), want.len(), "{what}: numel");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(g == w, "{what}: element {i}: got {g}, expected {w}");
    }
}

fn assert_state_dict_matches(what: &str, sd: &[(String, TensorData)], e: &Json) {
    let keys: Vec<&str> = e["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let got: Vec<&str> = sd.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(got, keys, "{what}: keys/order");
    for (k, t) in sd {
        assert_tensor_matches(&format!("{what}[{k}]"), t, &e["tensors"][k.as_str()]);
    }
}

fn err_string<T: std::fmt::Debug>(r: Result<T, CheckpointError>) -> (CheckpointError, String) {
    let e = r.expect_err("expected an error");
    let s = e.to_string();
    (e, s)
}

// ---------------------------------------------------------------------------
// Reading torch-written fixtures
// ---------------------------------------------------------------------------

#[test]
fn reads_bare_state_dict_with_dtypes_views_and_shared_storages() {
    let v = load_pth(fixture("bare_mixed.pth")).unwrap();
    let sd = state_dict_from(&v).unwrap();
    assert_state_dict_matches("bare_mixed", &sd, &expected()["bare_mixed.pth"]);
    // spot checks that don't depend on the JSON
    let get = |k: &str| sd.iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(get("view").shape, vec![3, 3]);
    assert_eq!(
        get("view").to_f32().unwrap()[0],
        get("base").to_f32().unwrap()[6]
    );
    assert_eq!(get("scalar").shape, Vec::<usize>::new());
    assert_eq!(get("scalar").to_f32().unwrap(), vec![2.5]);
    assert_eq!(get("empty").shape, vec![0, 3]);
    assert!(get("empty").bytes.is_empty());
    assert_eq!(get("bool").dtype, DType::Bool);
}

#[test]
fn reads_big_endian_archives() {
    let v = load_pth(fixture("big_endian.pth")).unwrap();
    let sd = state_dict_from(&v).unwrap();
    assert_state_dict_matches("big_endian", &sd, &expected()["big_endian.pth"]);
}

#[test]
fn reads_training_checkpoint_with_ddp_prefix_and_adamw_state() {
    let v = load_pth(fixture("train_ddp.pth")).unwrap();
    let e = expected();
    let e = &e["train_ddp.pth"];
    assert_eq!(v.get("epoch").and_then(Value::as_int), Some(7));

    // raw model dict keeps the `module.` prefix
    let raw_keys: Vec<&str> = v
        .get("model")
        .unwrap()
        .as_dict()
        .unwrap()
        .iter()
        .map(|(k, _)| k.as_str().unwrap())
        .collect();
    assert!(raw_keys.iter().all(|k| k.starts_with("module.")));

    // state_dict_from strips it; values exact
    let sd = state_dict_from(&v).unwrap();
    let stripped: Vec<(String, TensorData)> = sd.clone();
    let e_model = &e["model"];
    let want_keys: Vec<String> = e_model["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            k.as_str()
                .unwrap()
                .strip_prefix("module.")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        stripped.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        want_keys
    );
    for (k, t) in &sd {
        assert_tensor_matches(k, t, &e_model["tensors"][format!("module.{k}")]);
    }

    // optimizer state: int keys, step/exp_avg/exp_avg_sq tensors
    let opt = v.get("optimizer").unwrap();
    let state = opt.get("state").unwrap();
    let e_state = e["optimizer"]["state"].as_object().unwrap();
    assert_eq!(state.as_dict().unwrap().len(), e_state.len());
    for (idx, e_entry) in e_state {
        let entry = state.get_int(idx.parse().unwrap()).unwrap();
        for name in ["step", "exp_avg", "exp_avg_sq"] {
            assert_tensor_matches(
                &format!("state[{idx}].{name}"),
                entry.get(name).unwrap().as_tensor().unwrap(),
                &e_entry[name],
            );
        }
    }
    let groups = opt.get("param_groups").unwrap().as_seq().unwrap();
    let e_group = &e["optimizer"]["param_groups"][0];
    let g = &groups[0];
    assert_eq!(g.get("lr").unwrap().as_f64(), e_group["lr"].as_f64());
    assert_eq!(
        g.get("weight_decay").unwrap().as_f64(),
        e_group["weight_decay"].as_f64()
    );
    assert_eq!(g.get("eps").unwrap().as_f64(), e_group["eps"].as_f64());
    let betas = g.get("betas").unwrap();
    assert!(matches!(betas, Value::Tuple(_)));
    assert_eq!(
        betas.as_seq().unwrap()[1].as_f64(),
        e_group["betas"][1].as_f64()
    );
    assert_eq!(g.get("amsgrad").unwrap().as_bool(), Some(false));
    let params: Vec<i64> = g
        .get("params")
        .unwrap()
        .as_seq()
        .unwrap()
        .iter()
        .map(|p| p.as_int().unwrap())
        .collect();
    assert_eq!(params, json_numbers::i64s(&e_group["params"]));
}

#[test]
fn nesting_within_cap_loads() {
    let v = load_pth(fixture("nesting_ok.pth")).unwrap();
    let mut cur = v.get("ok").unwrap();
    let mut depth = 0;
    while let Value::List(items) = cur {
        assert_eq!(items.len(), 1);
        cur = &items[0];
        depth += 1;
    }
    assert_eq!(depth, 50);
    assert_eq!(cur.as_int(), Some(1));
}

// ---------------------------------------------------------------------------
// Bad inputs
// ---------------------------------------------------------------------------

#[test]
fn bad_files_are_errors_naming_the_file() {
    // (fixture, whether the error is of the kind expected, words the message must contain
    // besides the file name)
    type Case = (
        &'static str,
        fn(&CheckpointError) -> bool,
        &'static [&'static str],
    );
    let cases: [Case; 4] = [
        (
            "truncated.pth",
            |e| matches!(e, CheckpointError::Zip { .. }),
            &[],
        ),
        (
            "not_a_zip.pth",
            |e| matches!(e, CheckpointError::Format { .. }),
            &["zip"],
        ),
        ("legacy.pth", |_| true, &["legacy"]),
        (
            "does_not_exist.pth",
            |e| matches!(e, CheckpointError::Io { .. }),
            &[],
        ),
    ];
    for (file, expected_kind, words) in cases {
        let (e, s) = err_string(load_pth(fixture(file)));
        assert!(expected_kind(&e), "{file}: {e:?}");
        for w in std::iter::once(&file).chain(words) {
            assert!(s.contains(w), "{file}: {s}");
        }
    }
}

#[test]
fn forbidden_global_is_named() {
    let (e, s) = err_string(load_pth(fixture("evil_global.pth")));
    match &e {
        CheckpointError::ForbiddenGlobal { name, path } => {
            assert_eq!(name, "os.system");
            assert!(path.ends_with("evil_global.pth"));
        }
        other => panic!("expected ForbiddenGlobal, got {other:?}"),
    }
    assert!(
        s.contains("os.system") && s.contains("evil_global.pth"),
        "{s}"
    );
}

#[test]
fn forbidden_reduce_from_torch_save_is_named() {
    let (e, s) = err_string(load_pth(fixture("evil_reduce.pth")));
    match &e {
        // os.system is posix.system on Linux, nt.system on Windows
        CheckpointError::ForbiddenGlobal { name, .. } => {
            assert!(name.ends_with(".system"), "{name}")
        }
        other => panic!("expected ForbiddenGlobal, got {other:?}"),
    }
    assert!(s.contains("system"), "{s}");
}

#[test]
fn deep_nesting_beyond_cap_is_an_error() {
    let (e, s) = err_string(load_pth(fixture("deep_nesting.pth")));
    assert!(matches!(e, CheckpointError::Pickle { .. }), "{e:?}");
    assert!(
        s.contains("nesting") && s.contains("deep_nesting.pth"),
        "{s}"
    );
    // a larger cap accepts it
    let limits = Limits {
        max_depth: 200,
        ..Limits::default()
    };
    load_pth_with_limits(fixture("deep_nesting.pth"), &limits).unwrap();
}

#[test]
fn cyclic_structure_is_an_error_not_a_hang() {
    let (_, s) = err_string(load_pth(fixture("cyclic.pth")));
    assert!(s.contains("cyclic") || s.contains("nesting"), "{s}");
}

#[test]
fn memo_cap_is_enforced() {
    let limits = Limits {
        max_memo: 10,
        ..Limits::default()
    };
    let (_, s) = err_string(load_pth_with_limits(fixture("train_ddp.pth"), &limits));
    assert!(s.contains("memo"), "{s}");
}

#[test]
fn state_dict_from_rejects_non_tensor_entries() {
    let v = Value::str_dict([("a", Value::Int(1))]);
    let (_, s) = err_string(state_dict_from(&v));
    assert!(s.contains("`a`") && s.contains("expected a tensor"), "{s}");
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

fn every_dtype_tensors() -> Vec<(String, TensorData)> {
    let mk = |dtype: DType, shape: Vec<usize>, f: &dyn Fn(usize) -> Vec<u8>| {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n).flat_map(f).collect();
        TensorData::new(dtype, shape, bytes).unwrap()
    };
    vec![
        (
            "f32".into(),
            TensorData::from_f32(vec![2, 3], &[1.5, -2.0, 0.1, 1e-30, -0.0, 3.4e38]),
        ),
        (
            "f16".into(),
            mk(DType::F16, vec![3], &|i| {
                half::f16::from_f32(i as f32 * 0.25 - 1.0)
                    .to_le_bytes()
                    .to_vec()
            }),
        ),
        (
            "bf16".into(),
            mk(DType::BF16, vec![2, 2], &|i| {
                half::bf16::from_f32(i as f32 * 3.0 - 5.0)
                    .to_le_bytes()
                    .to_vec()
            }),
        ),
        (
            "f64".into(),
            mk(DType::F64, vec![2], &|i| {
                (i as f64 / 3.0).to_le_bytes().to_vec()
            }),
        ),
        (
            "i64".into(),
            mk(DType::I64, vec![2], &|i| {
                (i as i64 * 1_000_000_007 - 5).to_le_bytes().to_vec()
            }),
        ),
        (
            "i32".into(),
            mk(DType::I32, vec![1, 2], &|i| {
                (i as i32 - 7).to_le_bytes().to_vec()
            }),
        ),
        (
            "i16".into(),
            mk(DType::I16, vec![2], &|i| {
                (i as i16 - 300).to_le_bytes().to_vec()
            }),
        ),
        (
            "i8".into(),
            mk(DType::I8, vec![2], &|i| vec![(i as i8 - 100) as u8]),
        ),
        (
            "u8".into(),
            mk(DType::U8, vec![3], &|i| vec![(i * 100) as u8]),
        ),
        (
            "bool".into(),
            mk(DType::Bool, vec![3], &|i| vec![(i % 2) as u8]),
        ),
        ("scalar".into(), TensorData::from_f32(vec![], &[7.25])),
        ("empty".into(), TensorData::from_f32(vec![0, 4], &[])),
        (
            "big_rank".into(),
            TensorData::from_f32(vec![1, 2, 1, 2, 1], &[1.0, 2.0, 3.0, 4.0]),
        ),
    ]
}

fn kitchen_sink() -> Value {
    let long: Vec<Value> = (0..2500).map(Value::Int).collect();
    Value::str_dict([
        ("state_dict", Value::from_state_dict(every_dtype_tensors())),
        ("none", Value::None),
        (
            "flags",
            Value::List(vec![Value::Bool(true), Value::Bool(false)]),
        ),
        (
            "ints",
            Value::List(
                [
                    0,
                    255,
                    256,
                    65535,
                    65536,
                    -1,
                    -129,
                    i32::MAX as i64,
                    i32::MIN as i64,
                    1 << 40,
                    i64::MAX,
                    i64::MIN,
                ]
                .into_iter()
                .map(Value::Int)
                .collect(),
            ),
        ),
        (
            "floats",
            Value::Tuple(vec![
                Value::Float(1e-4),
                Value::Float(-0.0),
                Value::Float(f64::INFINITY),
            ]),
        ),
        ("text", Value::Str("héllo ✓ sam".into())),
        ("bytes", Value::Bytes(vec![0, 1, 127, 128, 255])),
        ("long_list", Value::List(long)),
        (
            "tuples",
            Value::List(
                (0..6)
                    .map(|n| Value::Tuple((0..n).map(|i| Value::Int(i as i64)).collect()))
                    .collect(),
            ),
        ),
        (
            "int_keys",
            Value::Dict(vec![
                (Value::Int(0), Value::Str("zero".into())),
                (Value::Int(-3), Value::Dict(vec![])),
            ]),
        ),
    ])
}

#[test]
fn save_then_load_round_trips_every_value_kind() {
    let d = tmpdir("roundtrip");
    let p = d.join("sink.pth");
    let v = kitchen_sink();
    save_pth(&p, &v).unwrap();
    let back = load_pth(&p).unwrap();
    assert_eq!(back, v);
    // no temp files left behind
    let names: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("sink.pth")]);
}

#[test]
fn torch_written_checkpoints_round_trip_through_writer() {
    let d = tmpdir("retorch");
    for name in ["bare_mixed.pth", "train_ddp.pth", "sam_tiny.pth"] {
        let v = load_pth(fixture(name)).unwrap();
        let p = d.join(name);
        save_pth(&p, &v).unwrap();
        assert_eq!(load_pth(&p).unwrap(), v, "{name}");
    }
}

#[test]
fn written_zip_has_torch_layout() {
    use std::io::Read;
    let d = tmpdir("layout");
    let p = d.join("my_ckpt.pth");
    save_pth(&p, &Value::from_state_dict(every_dtype_tensors())).unwrap();
    let mut z = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
    let names: Vec<String> = z.file_names().map(str::to_string).collect();
    let n = every_dtype_tensors().len();
    let mut want = vec![
        "my_ckpt/data.pkl".to_string(),
        "my_ckpt/.format_version".into(),
        "my_ckpt/.storage_alignment".into(),
        "my_ckpt/byteorder".into(),
    ];
    want.extend((0..n).map(|i| format!("my_ckpt/data/{i}")));
    want.push("my_ckpt/version".into());
    want.push("my_ckpt/.data/serialization_id".into());
    let mut sorted_names = names.clone();
    sorted_names.sort();
    let mut sorted_want = want.clone();
    sorted_want.sort();
    assert_eq!(sorted_names, sorted_want);
    for i in 0..z.len() {
        let mut f = z.by_index(i).unwrap();
        assert_eq!(f.compression(), zip::CompressionMethod::Stored);
        assert_eq!(f.data_start() % 64, 0, "{} not 64-byte aligned", f.name());
        let name = f.name().to_string();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap(); // checks the CRC
        match name.as_str() {
            "my_ckpt/byteorder" => assert_eq!(buf, b"little"),
            "my_ckpt/version" => assert_eq!(buf, b"3\n"),
            "my_ckpt/.data/serialization_id" => {
                assert_eq!(buf.len(), 40);
                assert!(buf.iter().all(u8::is_ascii_digit));
            }
            _ => {}
        }
    }
    // data records hold the tensors in order
    for (i, (_, t)) in every_dtype_tensors().iter().enumerate() {
        let mut buf = Vec::new();
        z.by_name(&format!("my_ckpt/data/{i}"))
            .unwrap()
            .read_to_end(&mut buf)
            .unwrap();
        assert_eq!(buf, t.bytes);
    }
}

#[test]
fn save_into_missing_directory_fails_without_output() {
    let d = tmpdir("nodir");
    let p = d.join("missing/sub/x.pth");
    let (e, s) = err_string(save_pth(&p, &Value::from_state_dict(vec![])));
    assert!(matches!(e, CheckpointError::Io { .. }), "{e:?}");
    assert!(s.contains("missing"), "{s}");
    assert!(!p.exists());
}

#[test]
fn save_rejects_inconsistent_tensor_without_touching_target() {
    let d = tmpdir("badtensor");
    let p = d.join("x.pth");
    std::fs::write(&p, b"old").unwrap();
    let bad = TensorData {
        dtype: DType::F32,
        shape: vec![3],
        bytes: vec![0; 5],
    };
    let (_, s) = err_string(save_pth(
        &p,
        &Value::from_state_dict(vec![("w".into(), bad)]),
    ));
    assert!(s.contains("expected 12"), "{s}");
    assert_eq!(std::fs::read(&p).unwrap(), b"old");
    assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "temp file left");
}

#[test]
fn safetensors_round_trip_keeps_order_and_values() {
    let d = tmpdir("st");
    let p = d.join("w.safetensors");
    let mut sd = every_dtype_tensors();
    sd.reverse(); // not alphabetical
    save_safetensors(&p, &sd).unwrap();
    assert_eq!(load_safetensors(&p).unwrap(), sd);
    let (_, s) = err_string(load_safetensors(fixture("not_a_zip.pth")));
    assert!(s.contains("not_a_zip.pth"), "{s}");
}

// ---------------------------------------------------------------------------
// Conversion
// ---------------------------------------------------------------------------

fn medsam_expected_in_sam_order() -> Vec<(String, TensorData)> {
    let sam = state_dict_from(&load_pth(fixture("sam_tiny.pth")).unwrap()).unwrap();
    let med = state_dict_from(&load_pth(fixture("medsam_tiny_train.pth")).unwrap()).unwrap();
    sam.iter()
        .map(|(k, _)| {
            let t = med.iter().find(|(m, _)| m == k).unwrap().1.clone();
            (k.clone(), t)
        })
        .collect()
}

#[test]
fn convert_writes_medsam_weights_in_sam_key_order() {
    let d = tmpdir("convert");
    let want = medsam_expected_in_sam_order();
    // expected values come from the JSON too (not only from our own reader)
    let e = expected();
    for (k, t) in &want {
        assert_tensor_matches(
            k,
            t,
            &e["medsam_tiny_train.pth"]["model"]["tensors"][format!("module.{k}")],
        );
    }
    let sam_keys: Vec<&str> = e["sam_tiny.pth"]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();

    let out = d.join("medsam_converted.pth");
    let rep = convert(
        fixture("sam_tiny.pth"),
        fixture("medsam_tiny_train.pth"),
        &out,
        OutputFormat::Pth,
    )
    .unwrap();
    assert_eq!(rep.tensors, sam_keys.len());
    assert_eq!(rep.unused_keys, vec!["extra.head.weight".to_string()]);
    assert_eq!(
        rep.parameters,
        want.iter().map(|(_, t)| t.numel()).sum::<usize>()
    );
    let v = load_pth(&out).unwrap();
    // a bare state dict with exactly SAM's keys, in SAM's order
    let got = state_dict_from(&v).unwrap();
    assert_eq!(
        got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        sam_keys
    );
    assert_eq!(got, want);
    assert!(v.get("model").is_none());

    let out_st = d.join("medsam_converted.safetensors");
    convert(
        fixture("sam_tiny.pth"),
        fixture("medsam_tiny_train.pth"),
        &out_st,
        OutputFormat::Safetensors,
    )
    .unwrap();
    assert_eq!(load_safetensors(&out_st).unwrap(), want);
}

#[test]
fn convert_missing_key_is_named() {
    let d = tmpdir("convert-missing");
    let out = d.join("x.pth");
    let (e, s) = err_string(convert(
        fixture("sam_tiny.pth"),
        fixture("medsam_missing_key.pth"),
        &out,
        OutputFormat::Pth,
    ));
    match &e {
        CheckpointError::MissingKey { key, path } => {
            assert_eq!(key, "model.mask_decoder.iou_token.weight");
            assert!(path.ends_with("medsam_missing_key.pth"));
        }
        other => panic!("expected MissingKey, got {other:?}"),
    }
    assert!(s.contains("mask_decoder.iou_token.weight"), "{s}");
    assert!(!out.exists());
}

#[test]
fn convert_shape_mismatch_is_named() {
    let d = tmpdir("convert-shape");
    let mut med = state_dict_from(&load_pth(fixture("medsam_tiny_train.pth")).unwrap()).unwrap();
    for (k, t) in med.iter_mut() {
        if k == "image_encoder.patch_embed.proj.bias" {
            *t = TensorData::from_f32(vec![5], &[0.0; 5]);
        }
    }
    let med_path = d.join("wrong_shape.pth");
    save_pth(
        &med_path,
        &Value::str_dict([("model", Value::from_state_dict(med))]),
    )
    .unwrap();
    let (_, s) = err_string(convert(
        fixture("sam_tiny.pth"),
        &med_path,
        d.join("x.pth"),
        OutputFormat::Pth,
    ));
    assert!(
        s.contains("model.image_encoder.patch_embed.proj.bias") && s.contains("[5]"),
        "{s}"
    );
}

/// `medsam convert` of the fixture `sam_tiny.pth` and the fixture `medsam` into `save`.
fn cli_convert(medsam: &str, save: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_medsam"))
        .args(["convert", "--sam-ckpt-path"])
        .arg(fixture("sam_tiny.pth"))
        .arg("--medsam-ckpt-path")
        .arg(fixture(medsam))
        .arg("--save-path")
        .arg(save)
        .output()
        .unwrap()
}

#[test]
fn cli_convert_runs_and_reports() {
    // The real binary: format inferred from the extension, summary printed.
    let d = tmpdir("cli");
    let out = d.join("cli_out.safetensors");
    let stdout = success_stdout(&cli_convert("medsam_tiny_train.pth", &out));
    assert!(
        stdout.contains("9 tensors") && stdout.contains("safetensors"),
        "{stdout}"
    );
    assert_eq!(
        load_safetensors(&out).unwrap(),
        medsam_expected_in_sam_order()
    );
    // A missing key is an error that names it.
    let bad = cli_convert("medsam_missing_key.pth", &d.join("bad.pth"));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("model."), "{err}");
}

// ---------------------------------------------------------------------------
// torch.load(weights_only=True) on files written here (needs MEDSAM_PYTHON)
// ---------------------------------------------------------------------------

fn python() -> Option<String> {
    match std::env::var("MEDSAM_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            eprintln!(
                "SKIPPED: set MEDSAM_PYTHON to a python with torch (e.g. a venv's bin/python) \
                 to check files written here with torch.load(weights_only=True)"
            );
            None
        }
    }
}

/// Runs `tests/fixtures/check_converted.py <args>`; panics unless it succeeds; its stdout.
fn check_converted<A: AsRef<std::ffi::OsStr> + std::fmt::Debug>(py: &str, args: &[A]) -> Vec<u8> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check_converted.py");
    let out = std::process::Command::new(py)
        .arg(&script)
        .args(args)
        .output()
        .expect("failed to run MEDSAM_PYTHON");
    assert!(
        out.status.success(),
        "check_converted.py {:?} failed:\n{}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// torch's view of the file (check_converted.py `desc`).
fn run_check(py: &str, args: &[&Path]) -> Json {
    serde_json::from_slice(&check_converted(py, args)).unwrap()
}

/// Compares torch's view of a loaded file (check_converted.py `desc`) with ours.
fn assert_py_matches(what: &str, j: &Json, v: &Value) {
    let obj = j.as_object().unwrap();
    let (tag, x) = obj.iter().find(|(k, _)| k.as_str() != "items").unwrap();
    match (tag.as_str(), v) {
        ("tensor", Value::Tensor(t)) => {
            assert_eq!(x["dtype"].as_str().unwrap(), t.dtype.to_string(), "{what}");
            assert_tensor_matches(
                what,
                t,
                &serde_json::json!({"dtype": format!("{:?}", t.dtype), "shape": x["shape"], "values": x["values"]}),
            );
        }
        ("dict", Value::Dict(pairs)) => {
            let all_tensors = !pairs.is_empty()
                && pairs
                    .iter()
                    .all(|(k, v)| matches!(k, Value::Str(_)) && matches!(v, Value::Tensor(_)));
            let want_class = if all_tensors { "OrderedDict" } else { "dict" };
            assert_eq!(x.as_str().unwrap(), want_class, "{what}: dict class");
            let items = obj["items"].as_array().unwrap();
            assert_eq!(items.len(), pairs.len(), "{what}: dict size");
            for (i, (it, (k, val))) in items.iter().zip(pairs).enumerate() {
                assert_py_matches(&format!("{what}.key{i}"), &it[0], k);
                assert_py_matches(&format!("{what}[{k:?}]"), &it[1], val);
            }
        }
        ("list", Value::List(items)) | ("tuple", Value::Tuple(items)) => {
            let arr = x.as_array().unwrap();
            assert_eq!(arr.len(), items.len(), "{what}: length");
            for (i, (a, b)) in arr.iter().zip(items).enumerate() {
                assert_py_matches(&format!("{what}[{i}]"), a, b);
            }
        }
        ("none", Value::None) => {}
        ("bool", Value::Bool(b)) => assert_eq!(x.as_bool(), Some(*b), "{what}"),
        ("int", Value::Int(i)) => assert_eq!(x.as_i64(), Some(*i), "{what}"),
        ("float", Value::Float(f)) => {
            let py: f64 = match x.as_str().unwrap() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                s => s.parse().unwrap(),
            };
            assert!(
                py == *f && py.is_sign_negative() == f.is_sign_negative(),
                "{what}: {py} vs {f}"
            );
        }
        ("str", Value::Str(s)) => assert_eq!(x.as_str(), Some(s.as_str()), "{what}"),
        ("bytes", Value::Bytes(b)) => {
            let py: Vec<u8> = x
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(&py, b, "{what}");
        }
        (t, v) => panic!("{what}: torch saw {t}, we have {}", v.type_name()),
    }
}

#[test]
fn torch_loads_files_we_wrote_weights_only() {
    let Some(py) = python() else { return };
    let d = tmpdir("torchload");

    // every value kind
    let p = d.join("sink.pth");
    let v = kitchen_sink();
    save_pth(&p, &v).unwrap();
    let j = run_check(&py, &[&p]);
    assert_py_matches("sink", &j["value"], &v);

    // a training checkpoint (model + real AdamW state) re-written by us:
    // torch.load works and AdamW.load_state_dict accepts the optimizer state
    let train = load_pth(fixture("train_ddp.pth")).unwrap();
    let p = d.join("train_rewritten.pth");
    save_pth(&p, &train).unwrap();
    let j = run_check(&py, &[&p]);
    assert_py_matches("train", &j["value"], &train);
    assert_eq!(j["adamw"]["params"].as_u64(), Some(6), "{j}");

    // a converted checkpoint, both formats
    let out = d.join("converted.pth");
    convert(
        fixture("sam_tiny.pth"),
        fixture("medsam_tiny_train.pth"),
        &out,
        OutputFormat::Pth,
    )
    .unwrap();
    let j = run_check(&py, &[&out]);
    assert_py_matches(
        "converted",
        &j["value"],
        &Value::from_state_dict(medsam_expected_in_sam_order()),
    );
    let out = d.join("converted.safetensors");
    convert(
        fixture("sam_tiny.pth"),
        fixture("medsam_tiny_train.pth"),
        &out,
        OutputFormat::Safetensors,
    )
    .unwrap();
    let j = run_check(&py, &[&out]);
    // safetensors.torch.load_file returns a plain dict
    let items = j["value"]["items"].as_array().unwrap();
    let want = medsam_expected_in_sam_order();
    assert_eq!(items.len(), want.len());
    for it in items {
        let k = it[0]["str"].as_str().unwrap();
        let t = &want.iter().find(|(n, _)| n == k).unwrap().1;
        assert_py_matches(k, &it[1], &Value::Tensor(t.clone()));
    }
}

/// Builds a random-init SAM vit_b checkpoint and a MedSAM-style training
/// checkpoint in python (~750 MB of temp files), converts, and loads the
/// result with segment_anything's `sam_model_registry["vit_b"]`. Opt-in:
/// needs MEDSAM_PYTHON (with torch + segment_anything) and
/// MEDSAM_SAM_REGISTRY_TEST=1.
#[test]
fn sam_model_registry_loads_converted_vit_b() {
    let Some(py) = python() else { return };
    if std::env::var("MEDSAM_SAM_REGISTRY_TEST").as_deref() != Ok("1") {
        eprintln!("SKIPPED: set MEDSAM_SAM_REGISTRY_TEST=1 to run the full vit_b registry check");
        return;
    }
    let d = tmpdir("registry");
    check_converted(&py, &[Path::new("--make-vit-b"), d.as_path()]);
    let sam = d.join("sam_vit_b_random.pth");
    let train = d.join("medsam_vit_b_train.pth");
    let out = d.join("medsam_vit_b.pth");
    let rep = convert(&sam, &train, &out, OutputFormat::Pth).unwrap();
    assert_eq!(rep.unused_keys, vec!["extra.unused".to_string()]);
    check_converted(
        &py,
        &[Path::new("--sam-registry"), out.as_path(), train.as_path()],
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// Every tensor of a state dict as its exact bits.
fn state_bits(sd: Vec<(String, medsam::Tensor)>) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    sd.into_iter()
        .map(|(k, t)| {
            let bits = t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect();
            (k, t.shape().to_vec(), bits)
        })
        .collect()
}

/// A model loaded from a checkpoint holds the checkpoint's tensors bit for bit (its parameters
/// start as placeholders, not random draws), and building a seeded model is unaffected.
#[test]
fn loaded_models_equal_their_checkpoint_bit_for_bit() {
    use medsam::models::lite::{LiteConfig, LiteMedSam};
    use medsam::models::{Sam, SamConfig};
    use medsam::weights::{load_any_model, load_model, state_dict_value, AnyModel};
    let dir = tmpdir("loaded-bits");
    let cfg_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sam/tiny_sam_config.json");
    let cfg = SamConfig::from_json_file(&cfg_path).unwrap();
    let seeded = state_bits(
        Sam::new(&cfg, 11, medsam::Device::Cpu)
            .unwrap()
            .state_dict(),
    );
    let p = dir.join("sam.pth");
    let mut sam = Sam::new(&cfg, 11, medsam::Device::Cpu).unwrap();
    save_pth(&p, &state_dict_value(sam.state_dict()).unwrap()).unwrap();
    let (mut loaded, report) = load_model(&p, None, Some(&cfg_path), medsam::Device::Cpu).unwrap();
    assert_eq!(report.loaded, seeded.len());
    assert_eq!(state_bits(loaded.state_dict()), seeded);
    // Loading shares the checkpoint's tensors: used in place from the mapped file (unless
    // MEDSAM_NO_MMAP=1, which mapped_weights:: runs this test with).
    let mapped = std::env::var_os("MEDSAM_NO_MMAP").is_none();
    let all_mapped = |sd: Vec<(String, medsam::Tensor)>| sd.iter().all(|(_, t)| t.is_mapped());
    let none_mapped = |sd: Vec<(String, medsam::Tensor)>| sd.iter().all(|(_, t)| !t.is_mapped());
    assert!(if mapped {
        all_mapped(loaded.state_dict())
    } else {
        none_mapped(loaded.state_dict())
    });
    assert_eq!(state_bits(sam.state_dict()), seeded);
    let again = state_bits(
        Sam::new(&cfg, 11, medsam::Device::Cpu)
            .unwrap()
            .state_dict(),
    );
    assert_eq!(again, seeded);

    let mut lite = LiteMedSam::new(&LiteConfig::lite_medsam(), 5, medsam::Device::Cpu).unwrap();
    let lite_bits = state_bits(lite.state_dict());
    let p = dir.join("lite.pth");
    save_pth(&p, &state_dict_value(lite.state_dict()).unwrap()).unwrap();
    match load_any_model(&p, None, None, medsam::Device::Cpu).unwrap() {
        (AnyModel::Lite(mut m), _) => {
            assert_eq!(state_bits(m.state_dict()), lite_bits);
            assert!(if mapped {
                all_mapped(m.state_dict())
            } else {
                none_mapped(m.state_dict())
            });
        }
        (AnyModel::Sam(_), _) => panic!("a LiteMedSAM checkpoint loaded as SAM"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

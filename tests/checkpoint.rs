//! Checkpoint I/O tests against fixtures produced by real torch
//! (tests/fixtures/make_ckpt_fixtures.py) and, when `MEDSAM_PYTHON` points to
//! a python with torch, against torch.load(weights_only=True) on files written
//! here.

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
    let shape: Vec<usize> = e["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(t.shape, shape, "{what}: shape");
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
        .map(|k| k.as_str().unwrap().strip_prefix("module.").unwrap().to_string())
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
    let e_params: Vec<i64> = e_group["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_i64().unwrap())
        .collect();
    assert_eq!(params, e_params);
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
fn truncated_file_is_an_error_naming_the_file() {
    let (e, s) = err_string(load_pth(fixture("truncated.pth")));
    assert!(matches!(e, CheckpointError::Zip { .. }), "{e:?}");
    assert!(s.contains("truncated.pth"), "{s}");
}

#[test]
fn non_zip_file_is_rejected() {
    let (e, s) = err_string(load_pth(fixture("not_a_zip.pth")));
    assert!(matches!(e, CheckpointError::Format { .. }), "{e:?}");
    assert!(s.contains("not_a_zip.pth") && s.contains("zip"), "{s}");
}

#[test]
fn legacy_format_is_rejected_clearly() {
    let (_, s) = err_string(load_pth(fixture("legacy.pth")));
    assert!(s.contains("legacy.pth") && s.contains("legacy"), "{s}");
}

#[test]
fn missing_file_is_io_error() {
    let (e, s) = err_string(load_pth(fixture("does_not_exist.pth")));
    assert!(matches!(e, CheckpointError::Io { .. }), "{e:?}");
    assert!(s.contains("does_not_exist.pth"), "{s}");
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
    assert!(s.contains("os.system") && s.contains("evil_global.pth"), "{s}");
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
    assert!(s.contains("nesting") && s.contains("deep_nesting.pth"), "{s}");
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

//! Model weights used in place from the checkpoint file's mapping: stored, aligned, contiguous f32
//! tensors are mapped (everything else copied), their values are the copy path's bit for bit, a
//! training step writes to a copy and never to the file, and `MEDSAM_NO_MMAP=1` turns it off
//! (every test here, and the loaded-model test of `checkpoint::`, runs again in a child process
//! with it set).

use medsam::checkpoint::{save_pth, save_safetensors, DType, TensorData, Value};
use medsam::optim::{AdamW, AdamWConfig};
use medsam::weights::{read_checkpoint, read_weights, state_dict};
use medsam::Tensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("medsam-mapped-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Whether this process maps checkpoints (the child run sets `MEDSAM_NO_MMAP=1`); read as the
/// library reads it.
fn mapping_on() -> bool {
    !medsam::backend::mmap_disabled()
}

fn values(n: usize, seed: f64) -> Vec<f64> {
    (0..n)
        .map(|i| (i as f64 * 0.37 + seed).sin() * 3.0)
        .collect()
}

/// f32 tensors (one of many pages, odd-sized ones) and tensors of other dtypes, which are copied.
fn tensors() -> Vec<(String, TensorData)> {
    let f32s = |shape: Vec<usize>, seed: f64| {
        let n = shape.iter().product();
        let v: Vec<f32> = values(n, seed).into_iter().map(|x| x as f32).collect();
        TensorData::from_f32(shape, &v)
    };
    let f16s = |n: usize| {
        let b = values(n, 0.5)
            .into_iter()
            .flat_map(|x| half::f16::from_f64(x).to_le_bytes())
            .collect();
        TensorData::new(DType::F16, vec![n], b).unwrap()
    };
    let f64s = |n: usize| {
        let b = values(n, 0.25)
            .into_iter()
            .flat_map(f64::to_le_bytes)
            .collect();
        TensorData::new(DType::F64, vec![n], b).unwrap()
    };
    vec![
        ("a.weight".into(), f32s(vec![64, 300], 0.0)),
        ("a.bias".into(), f32s(vec![7], 1.0)),
        ("half".into(), f16s(15)),
        ("b.weight".into(), f32s(vec![3, 3, 2], 2.0)),
        ("double".into(), f64s(9)),
        ("c.weight".into(), f32s(vec![5, 1, 3], 3.0)),
    ]
}

/// A safetensors file of an f32 `v` [2] (aligned), an f16 `h` [1], and an f32 `w` [3] right after
/// it (2 bytes off alignment).
fn unaligned_safetensors() -> Vec<u8> {
    let mut header = String::from(r#"{"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#);
    header.push_str(r#""h":{"dtype":"F16","shape":[1],"data_offsets":[8,10]},"#);
    header.push_str(r#""w":{"dtype":"F32","shape":[3],"data_offsets":[10,22]}}"#);
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    for v in [0.5f32, 7.0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&half::f16::from_f32(0.25).to_le_bytes());
    for v in [1.5f32, -2.0, 3.25] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec().unwrap().iter().map(|x| x.to_bits()).collect()
}

/// Byte offset of each tensor's data in a safetensors file.
fn safetensors_offsets(path: &Path) -> BTreeMap<String, usize> {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            (
                k.clone(),
                8 + n + v["data_offsets"][0].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// The weights as the model loaders read them against the copy path (`read_checkpoint` +
/// `state_dict`): same names, shapes and bits; `mapped(name)` says which must be mapped.
fn check_against_copy_path(path: &Path, mapped: impl Fn(&str) -> bool) {
    let fast = read_weights(path).unwrap();
    let copy = state_dict(path, &read_checkpoint(path).unwrap()).unwrap();
    assert_eq!(
        fast.keys().collect::<Vec<_>>(),
        copy.keys().collect::<Vec<_>>()
    );
    for (k, t) in &fast {
        let c = &copy[k];
        assert_eq!(t.shape(), c.shape(), "{}: {k}", path.display());
        assert_eq!(bits(t), bits(c), "{}: {k}", path.display());
        assert_eq!(
            t.is_mapped(),
            mapping_on() && mapped(k),
            "{}: {k} mapped",
            path.display()
        );
        assert!(!c.is_mapped(), "the copy path never maps");
    }
}

#[test]
fn stored_f32_weights_are_mapped_and_equal_the_copy_path() {
    let dir = tmpdir("values");
    let sd = tensors();
    let dtypes: BTreeMap<String, DType> = sd.iter().map(|(k, t)| (k.clone(), t.dtype)).collect();
    let pth = dir.join("w.pth");
    save_pth(&pth, &Value::from_state_dict(sd.clone())).unwrap();
    check_against_copy_path(&pth, |k| dtypes[k] == DType::F32);

    let st = dir.join("w.safetensors");
    save_safetensors(&st, &sd).unwrap();
    let offsets = safetensors_offsets(&st);
    check_against_copy_path(&st, |k| {
        dtypes[k] == DType::F32 && offsets[k].is_multiple_of(4)
    });
    // safetensors packs tensors back to back: an f32 tensor after a 2-byte f16 one is not
    // 4-byte aligned (our writer orders by dtype, so this file is made by hand) and is copied.
    let odd = dir.join("odd.safetensors");
    std::fs::write(&odd, unaligned_safetensors()).unwrap();
    let offsets = safetensors_offsets(&odd);
    assert_eq!(offsets["w"] % 4, 2, "{offsets:?}");
    assert_eq!(offsets["v"] % 4, 0, "{offsets:?}");
    check_against_copy_path(&odd, |k| k == "v");
    let w = read_weights(&odd).unwrap();
    assert_eq!(w["w"].to_vec().unwrap(), [1.5, -2.0, 3.25]);
    assert_eq!(w["v"].to_vec().unwrap(), [0.5, 7.0]);

    // torch-written files: views, shared storages, mixed dtypes (copied unless plain f32), and a
    // big-endian archive (always copied).
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ckpt");
    let value = medsam::checkpoint::load_pth(fixtures.join("big_endian.pth")).unwrap();
    assert!(!medsam::checkpoint::state_dict_from(&value)
        .unwrap()
        .is_empty());
    check_against_copy_path(&fixtures.join("big_endian.pth"), |_| false);
    let mixed = fixtures.join("bare_mixed.pth");
    let fast = read_weights(&mixed).unwrap();
    let copy = state_dict(&mixed, &read_checkpoint(&mixed).unwrap()).unwrap();
    assert_eq!(fast.len(), copy.len());
    for (k, t) in &fast {
        assert_eq!(bits(t), bits(&copy[k]), "bare_mixed: {k}");
        assert_eq!(t.shape(), copy[k].shape(), "bare_mixed: {k}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A NaN deep in a large mapped tensor (scanned in parallel chunks) is found at the same element,
/// with the same error, as on the copy path.
#[test]
fn non_finite_mapped_weights_are_the_copy_paths_error() {
    let dir = tmpdir("nan");
    let n = 600_000;
    for (at, bad) in [(0, f32::NAN), (400_001, f32::INFINITY), (n - 1, f32::NAN)] {
        let mut v = vec![0.5f32; n];
        v[at] = bad;
        if at + 70_000 < n {
            v[at + 70_000] = f32::NAN;
        }
        let p = dir.join("w.pth");
        let sd = vec![("x.weight".to_string(), TensorData::from_f32(vec![n], &v))];
        save_pth(&p, &Value::from_state_dict(sd)).unwrap();
        let fast = read_weights(&p).unwrap_err().to_string();
        let copy = state_dict(&p, &read_checkpoint(&p).unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(fast, copy);
        assert!(fast.contains(&format!("element {at} is {bad}")), "{fast}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One AdamW step on a quadratic loss.
fn adamw_step(p: Tensor, x: &Tensor) -> Tensor {
    let mut p = p.into_variable();
    let y = x.matmul(&p).unwrap();
    let loss = y.mul(&y).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    drop((y, loss));
    let config = AdamWConfig {
        lr: 1e-2,
        ..AdamWConfig::default()
    };
    AdamW::new(config, 1)
        .step(&mut [("w".to_string(), &mut p)])
        .unwrap();
    p
}

#[test]
fn training_step_on_mapped_weights_copies_and_leaves_the_file_unchanged() {
    let dir = tmpdir("train");
    let p = dir.join("w.pth");
    save_pth(&p, &Value::from_state_dict(tensors())).unwrap();
    let before = std::fs::read(&p).unwrap();
    let mut weights = read_weights(&p).unwrap();
    let w = weights.remove("a.weight").unwrap();
    let other = weights.remove("b.weight").unwrap();
    assert_eq!(w.is_mapped(), mapping_on());
    let original = bits(&w);
    let owned = Tensor::from_vec(w.to_vec().unwrap(), w.shape()).unwrap();
    assert!(!owned.is_mapped());
    let x = Tensor::from_vec(
        values(4 * 64, 7.0).into_iter().map(|v| v as f32).collect(),
        &[4, 64],
    )
    .unwrap();

    let stepped = adamw_step(w, &x);
    let reference = adamw_step(owned, &x);
    assert!(!stepped.is_mapped(), "an updated parameter owns its data");
    assert_eq!(
        bits(&stepped),
        bits(&reference),
        "same update as on owned weights"
    );
    assert_ne!(bits(&stepped), original, "the parameter was updated");

    assert!(
        std::fs::read(&p).unwrap() == before,
        "the checkpoint file is unchanged"
    );
    assert_eq!(other.is_mapped(), mapping_on());
    let again = read_weights(&p).unwrap();
    assert_eq!(bits(&again["a.weight"]), original);
    assert_eq!(bits(&again["b.weight"]), bits(&other));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs this file's tests and the loaded-model test of `checkpoint::` again with
/// `MEDSAM_NO_MMAP=1`: every weight is then owned memory.
#[test]
fn no_mmap_opt_out_reads_weights_into_owned_memory() {
    if !mapping_on() {
        // The child run itself, or a whole run with the opt-out set: nothing to compare against.
        eprintln!("skipped: MEDSAM_NO_MMAP is set in this process, so it cannot test unsetting it");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "mapped_weights::",
            "checkpoint::loaded_models_equal_their_checkpoint_bit_for_bit",
            "--test-threads=2",
        ])
        .env("MEDSAM_NO_MMAP", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("5 passed"), "{stdout}");
}

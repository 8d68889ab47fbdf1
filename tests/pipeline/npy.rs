//! `.npy` reader/writer: fixtures written by NumPy, round trips, atomic writes, errors.

use crate::common::process;
use medsam::npy::{read_npy, write_npy, write_npy_f64, write_npy_u8, NpyArray, NpyData, NpyError};
use process::{python_or_skip, python_script_succeeds};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preprocess/npy")
        .join(name)
}

fn expected_f64() -> Vec<f64> {
    (0..24).map(|i| i as f64 * 0.5 - 3.0).collect()
}

#[test]
fn reads_numpy_c_order_f8() {
    let a = read_npy(fixture("c_f8.npy")).unwrap();
    assert_eq!(a.shape, vec![2, 3, 4]);
    assert_eq!(a.data, NpyData::F64(expected_f64()));
}

#[test]
fn reads_fortran_order_as_c_order() {
    let a = read_npy(fixture("fortran_i2.npy")).unwrap();
    assert_eq!(a.shape, vec![2, 3, 4]);
    let want: Vec<i16> = expected_f64().iter().map(|&v| v as i16).collect();
    assert_eq!(a.data, NpyData::I16(want));
}

#[test]
fn reads_big_endian_bool_1d_scalar_v2() {
    let a = read_npy(fixture("big_f4.npy")).unwrap();
    let want: Vec<f32> = expected_f64().iter().map(|&v| v as f32).collect();
    assert_eq!(a.to_f32(), want);
    let b = read_npy(fixture("bool.npy")).unwrap();
    assert_eq!(
        b.data,
        NpyData::Bool(expected_f64().iter().map(|&v| v > 0.0).collect())
    );
    let c = read_npy(fixture("u1_1d.npy")).unwrap();
    assert_eq!(c.shape, vec![7]);
    assert_eq!(c.data, NpyData::U8((0..7).collect()));
    let s = read_npy(fixture("scalar_u2.npy")).unwrap();
    assert!(s.shape.is_empty());
    assert_eq!(s.data, NpyData::U16(vec![65535]));
    let v2 = read_npy(fixture("v2_i8.npy")).unwrap();
    assert_eq!(v2.shape, vec![3, 2]);
    assert_eq!(v2.data, NpyData::I64((0..6).collect()));
}

#[test]
fn round_trip_all_writers() {
    let dir = tempfile::tempdir().unwrap();
    let arrays = [
        NpyArray::new(vec![2, 3, 4], NpyData::F64(expected_f64())).unwrap(),
        NpyArray::new(
            vec![4, 6],
            NpyData::F32((0..24).map(|i| i as f32).collect()),
        )
        .unwrap(),
        NpyArray::new(vec![5], NpyData::U8(vec![0, 1, 2, 254, 255])).unwrap(),
        NpyArray::new(vec![2, 2], NpyData::I32(vec![-1, 2, -3, i32::MAX])).unwrap(),
        NpyArray::new(vec![], NpyData::F64(vec![1.5])).unwrap(),
    ];
    for (i, a) in arrays.iter().enumerate() {
        let p = dir.path().join(format!("a{i}.npy"));
        write_npy(&p, a).unwrap();
        assert_eq!(&read_npy(&p).unwrap(), a);
    }
    let p = dir.path().join("f.npy");
    write_npy_f64(&p, &[3, 8], &(0..24).map(|i| i as f64).collect::<Vec<_>>()).unwrap();
    assert_eq!(read_npy(&p).unwrap().shape, vec![3, 8]);
    let p = dir.path().join("u.npy");
    write_npy_u8(&p, &[2, 2], &[1, 2, 3, 4]).unwrap();
    assert_eq!(read_npy(&p).unwrap().data, NpyData::U8(vec![1, 2, 3, 4]));
    // no temporary files left behind
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn shape_mismatch_is_rejected_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.npy");
    let err = write_npy_u8(&p, &[3, 3], &[0; 8]).unwrap_err();
    assert!(matches!(err, NpyError::ShapeMismatch { .. }));
    assert!(!p.exists());
}

#[test]
fn truncated_and_garbage_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(fixture("c_f8.npy")).unwrap();
    // (file name, contents, whether the error is the one expected)
    type Case<'a> = (&'a str, &'a [u8], fn(&NpyError) -> bool);
    let cases: [Case; 2] = [
        ("trunc.npy", &full[..full.len() - 5], |e| {
            matches!(e, NpyError::Truncated { .. })
        }),
        ("garbage.npy", b"hello world, not numpy", |e| {
            matches!(e, NpyError::BadMagic { .. })
        }),
    ];
    for (name, bytes, expected) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = read_npy(&p).unwrap_err();
        assert!(expected(&e), "{name}: {e}");
        assert!(e.to_string().contains(name), "{name}: {e}");
    }
    let e = read_npy(dir.path().join("missing.npy")).unwrap_err();
    assert!(matches!(e, NpyError::Io { .. }));
}

/// NumPy itself must load what we write (runs only where the reference venv exists).
#[test]
fn numpy_loads_our_files() {
    let Some(py) = python_or_skip("numpy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p64 = dir.path().join("x.npy");
    write_npy_f64(&p64, &[2, 3, 4], &expected_f64()).unwrap();
    let pu8 = dir.path().join("y.npy");
    write_npy_u8(&pu8, &[1, 5], &[9, 8, 7, 6, 5]).unwrap();
    let script = format!(
        "import numpy as np\n\
         a=np.load(r'{}'); b=np.load(r'{}')\n\
         assert a.dtype==np.float64 and a.shape==(2,3,4) and a.flags.c_contiguous\n\
         assert np.array_equal(a.ravel(), np.arange(24)*0.5-3)\n\
         assert b.dtype==np.uint8 and b.shape==(1,5) and b.tolist()==[[9,8,7,6,5]]\n",
        p64.display(),
        pu8.display()
    );
    assert!(
        python_script_succeeds(&py, &script),
        "numpy failed to load our .npy files"
    );
}

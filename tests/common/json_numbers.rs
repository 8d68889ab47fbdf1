//! Reading the numbers of the JSON files the fixture scripts write.
#![allow(dead_code)] // each test binary uses a part

use serde_json::Value;

/// A JSON array of non-negative integers (a shape).
pub fn usizes(v: &Value) -> Vec<usize> {
    array(v)
        .iter()
        .map(|x| x.as_u64().unwrap_or_else(|| panic!("not a size: {x}")) as usize)
        .collect()
}

/// A JSON array of integers.
pub fn i64s(v: &Value) -> Vec<i64> {
    array(v)
        .iter()
        .map(|x| x.as_i64().unwrap_or_else(|| panic!("not an integer: {x}")))
        .collect()
}

/// A JSON array of numbers.
pub fn f64s(v: &Value) -> Vec<f64> {
    array(v)
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("not a number: {x}")))
        .collect()
}

fn array(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a JSON array: {v}"))
}

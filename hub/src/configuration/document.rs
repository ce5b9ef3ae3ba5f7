//! A device's configuration as people write it: a JSON object within the
//! bounds below, changed whole (`PUT`) or by a JSON merge patch (RFC 7396,
//! `PATCH`). Pure: the API, the command line and MQTT check here what they
//! were given, and every refusal names where in the object it is.

use serde_json::{Map, Value};

/// Longest configuration, as compact JSON text: the protocol's limit.
pub const MAX_BYTES: usize = protocol::limits::MAX_CONFIG_BYTES;
/// Deepest nesting: the top object is level 1, an object or array in it 2.
pub const MAX_DEPTH: usize = 4;
/// Most keys in one object, and items in one array.
pub const MAX_ENTRIES: usize = 64;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 64;
/// Longest string value, in bytes.
pub const MAX_STRING_BYTES: usize = 256;

/// Why a configuration or a patch was refused: where (`config`, or a path
/// in it such as `config.alarm.limit`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct Refused {
    pub path: String,
    pub problem: String,
}

fn refused(path: &str, problem: impl Into<String>) -> Refused {
    Refused {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

/// Whether `key` may name a setting: 1 to 64 bytes of `A-Z a-z 0-9 _ - .`,
/// so that it reads the same in a URL, an MQTT topic and `key=value`.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks a whole configuration (`PUT`'s body, or a patch's result): an
/// object within the bounds, without `null`s (a configuration holds
/// values; `null` removes a key only in a patch).
///
/// # Errors
/// The first bound broken, with its path.
pub fn check(config: &Value) -> Result<(), Refused> {
    let Value::Object(map) = config else {
        return Err(refused("config", "must be a JSON object"));
    };
    check_object(map, "config", 1, false)?;
    let len = config.to_string().len();
    if len > MAX_BYTES {
        return Err(refused(
            "config",
            format!("is {len} bytes of JSON; at most {MAX_BYTES}"),
        ));
    }
    Ok(())
}

/// Checks a merge patch before it is applied: the same bounds, with
/// `null` allowed (it removes the key).
///
/// # Errors
/// The first bound broken, with its path.
pub fn check_patch(patch: &Value) -> Result<(), Refused> {
    let Value::Object(map) = patch else {
        return Err(refused("config", "a patch must be a JSON object"));
    };
    check_object(map, "config", 1, true)
}

fn check_object(
    map: &Map<String, Value>,
    path: &str,
    depth: usize,
    nulls: bool,
) -> Result<(), Refused> {
    if map.len() > MAX_ENTRIES {
        return Err(refused(path, format!("has more than {MAX_ENTRIES} keys")));
    }
    for (key, value) in map {
        if !is_valid_key(key) {
            return Err(refused(
                path,
                format!("key {key:?} must be 1 to {MAX_KEY_BYTES} bytes of A-Z a-z 0-9 _ - ."),
            ));
        }
        check_value(value, &format!("{path}.{key}"), depth, nulls)?;
    }
    Ok(())
}

fn check_value(value: &Value, path: &str, depth: usize, nulls: bool) -> Result<(), Refused> {
    let nested = |depth: usize| {
        if depth >= MAX_DEPTH {
            Err(refused(
                path,
                format!("is nested deeper than {MAX_DEPTH} levels"),
            ))
        } else {
            Ok(depth + 1)
        }
    };
    match value {
        Value::Null if nulls => Ok(()),
        Value::Null => Err(refused(
            path,
            "null is not a value: leave the key out (in a PATCH, null removes it)",
        )),
        Value::Bool(_) | Value::Number(_) => Ok(()),
        Value::String(text) if text.len() > MAX_STRING_BYTES => Err(refused(
            path,
            format!("is longer than {MAX_STRING_BYTES} bytes"),
        )),
        Value::String(_) => Ok(()),
        Value::Array(items) => {
            let depth = nested(depth)?;
            if items.len() > MAX_ENTRIES {
                return Err(refused(path, format!("has more than {MAX_ENTRIES} items")));
            }
            for (i, item) in items.iter().enumerate() {
                // Inside an array, null is never a removal.
                check_value(item, &format!("{path}[{i}]"), depth, false)?;
            }
            Ok(())
        }
        // In a patch, an object merges into the key's object, so its nulls
        // remove keys there too.
        Value::Object(map) => check_object(map, path, nested(depth)?, nulls),
    }
}

/// Applies a JSON merge patch (RFC 7396) to `target`: each key of the
/// patch replaces the target's, an object merges into an object, and
/// `null` removes the key.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else {
        unreachable!("made an object just above");
    };
    for (key, change) in changes {
        if change.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), change);
        }
    }
}

/// Reads `key=value` settings (the command line's): the value as JSON
/// when it is a number, `true`, `false`, `null` (removes the key), or a
/// quoted string, and as text otherwise. Answers the merge patch they make.
///
/// # Errors
/// A setting without `=`, or with a key that may not name a setting.
pub fn patch_of_settings<'a>(
    settings: impl IntoIterator<Item = &'a str>,
) -> Result<Value, Refused> {
    let mut patch = Map::new();
    for setting in settings {
        let Some((key, text)) = setting.split_once('=') else {
            return Err(refused(setting, "a setting is key=value"));
        };
        if !is_valid_key(key) {
            return Err(refused(
                key,
                format!("a key is 1 to {MAX_KEY_BYTES} bytes of A-Z a-z 0-9 _ - ."),
            ));
        }
        let value = match serde_json::from_str::<Value>(text) {
            Ok(value @ (Value::Number(_) | Value::Bool(_) | Value::Null | Value::String(_))) => {
                value
            }
            _ => Value::String(text.to_owned()),
        };
        patch.insert(key.to_owned(), value);
    }
    Ok(Value::Object(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_flat_object_of_settings_is_a_configuration() {
        assert!(check(&json!({"sample_interval_ms": 5000, "mode": "eco", "on": true})).is_ok());
        assert!(check(&json!({})).is_ok());
    }

    #[test]
    fn anything_but_an_object_is_refused_at_the_top() {
        for value in [json!([1]), json!("x"), json!(3), Value::Null] {
            assert_eq!(check(&value).unwrap_err().path, "config");
        }
    }

    #[test]
    fn nesting_past_four_levels_is_refused_with_its_path() {
        assert!(check(&json!({"a": {"b": {"c": {"d": 1}}}})).is_ok());
        let err = check(&json!({"a": {"b": {"c": {"d": {"e": 1}}}}})).unwrap_err();
        assert_eq!(err.path, "config.a.b.c.d");
        assert!(err.problem.contains("deeper than 4"), "{err}");
        let err = check(&json!({"a": [[[[1]]]]})).unwrap_err();
        assert_eq!(err.path, "config.a[0][0][0]");
    }

    #[test]
    fn keys_strings_and_sizes_are_bounded() {
        let err = check(&json!({"bad key": 1})).unwrap_err();
        assert!(err.problem.contains("\"bad key\""), "{err}");
        let err = check(&json!({"s": "x".repeat(MAX_STRING_BYTES + 1)})).unwrap_err();
        assert_eq!(err.path, "config.s");
        let many: Map<String, Value> = (0..=MAX_ENTRIES)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect();
        assert!(check(&Value::Object(many)).is_err());
        // Within every other bound, still too much text in all.
        let big: Map<String, Value> = (0..40)
            .map(|i| (format!("k{i}"), json!("x".repeat(250))))
            .collect();
        let err = check(&Value::Object(big)).unwrap_err();
        assert!(err.problem.contains("bytes of JSON"), "{err}");
    }

    #[test]
    fn a_null_is_refused_in_a_configuration_but_removes_a_key_in_a_patch() {
        assert_eq!(check(&json!({"a": null})).unwrap_err().path, "config.a");
        assert!(check_patch(&json!({"a": null, "b": {"c": null}})).is_ok());
        assert!(check_patch(&json!({"a": [null]})).is_err());
    }

    #[test]
    fn a_merge_patch_replaces_merges_and_removes_as_rfc_7396_says() {
        let mut config = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        merge(
            &mut config,
            &json!({"a": 5, "b": {"c": null, "x": 1}, "e": [3], "f": "new"}),
        );
        assert_eq!(
            config,
            json!({"a": 5, "b": {"d": 3, "x": 1}, "e": [3], "f": "new"})
        );
        merge(&mut config, &json!({"b": null}));
        assert!(config.get("b").is_none());
    }

    #[test]
    fn settings_on_the_command_line_are_json_scalars_or_text() {
        let patch = patch_of_settings([
            "sample_interval_ms=5000",
            "mode=eco",
            "on=true",
            "gone=null",
            "s=\"5\"",
        ])
        .unwrap();
        assert_eq!(
            patch,
            json!({"sample_interval_ms": 5000, "mode": "eco", "on": true, "gone": null, "s": "5"})
        );
        assert!(patch_of_settings(["novalue"]).is_err());
        assert!(patch_of_settings(["bad key=1"]).is_err());
    }
}

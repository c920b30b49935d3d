//! Comparing a rendered object with its live copy (pure): does the cluster still hold every
//! field we render, where does it first differ, and what of the live object a diff should show.

use serde_json::Value;

/// True when every field of `desired` has the same value in `live` (extra live fields, such as
/// server defaults, are fine). Lists of objects with a `name` are matched by name; other lists
/// must be equal element by element.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            None => {
                dv.is_null()
                    || dv.as_object().is_some_and(|m| m.is_empty())
                    || dv.as_array().is_some_and(|a| a.is_empty())
            }
        }),
        (Value::Array(d), Value::Array(l)) => {
            let named = !d.is_empty()
                && d.iter()
                    .all(|x| x.get("name").is_some_and(Value::is_string));
            if named {
                d.iter().all(|dx| {
                    l.iter()
                        .any(|lx| lx.get("name") == dx.get("name") && is_subset(dx, lx))
                })
            } else {
                d.len() == l.len() && d.iter().zip(l).all(|(a, b)| is_subset(a, b))
            }
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// The first field path where `live` does not hold `desired`'s value (`None` when it does).
pub fn first_difference(desired: &Value, live: &Value) -> Option<String> {
    fn walk(d: &Value, l: &Value, path: &mut String) -> Option<String> {
        match (d, l) {
            (Value::Object(dm), Value::Object(lm)) => {
                for (k, dv) in dm {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    let found = match lm.get(k) {
                        Some(lv) => walk(dv, lv, path),
                        None if is_subset(dv, &Value::Null)
                            || dv.as_object().is_some_and(|m| m.is_empty())
                            || dv.as_array().is_some_and(|a| a.is_empty()) =>
                        {
                            None
                        }
                        None => Some(path.clone()),
                    };
                    if found.is_some() {
                        return found;
                    }
                    path.truncate(len);
                }
                None
            }
            (Value::Array(da), Value::Array(la)) => {
                let named = !da.is_empty()
                    && da
                        .iter()
                        .all(|x| x.get("name").is_some_and(Value::is_string));
                for (i, dx) in da.iter().enumerate() {
                    let len = path.len();
                    if named {
                        let name = dx["name"].as_str().unwrap_or_default();
                        path.push_str(&format!("[name={name}]"));
                        let found = match la.iter().find(|lx| lx.get("name") == dx.get("name")) {
                            Some(lx) => walk(dx, lx, path),
                            None => Some(path.clone()),
                        };
                        if found.is_some() {
                            return found;
                        }
                    } else {
                        path.push_str(&format!("[{i}]"));
                        let found = match la.get(i) {
                            Some(lx) => walk(dx, lx, path),
                            None => Some(path.clone()),
                        };
                        if found.is_some() {
                            return found;
                        }
                    }
                    path.truncate(len);
                }
                if !named && da.len() != la.len() {
                    return Some(format!("{path} (length {} vs {})", da.len(), la.len()));
                }
                None
            }
            _ if is_subset(d, l) => None,
            _ => Some(format!("{path} (want {d}, have {l})")),
        }
    }
    walk(desired, live, &mut String::new())
}

/// `live` reduced to the fields `desired` sets (named list items matched by name): what a diff
/// between the rendered object and the cluster should show.
pub fn project(desired: &Value, live: &Value) -> Value {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => Value::Object(
            d.iter()
                .filter_map(|(k, dv)| l.get(k).map(|lv| (k.clone(), project(dv, lv))))
                .collect(),
        ),
        (Value::Array(d), Value::Array(l)) => {
            let named = !d.is_empty()
                && d.iter()
                    .all(|x| x.get("name").is_some_and(Value::is_string));
            if named {
                Value::Array(
                    d.iter()
                        .filter_map(|dx| {
                            l.iter()
                                .find(|lx| lx.get("name") == dx.get("name"))
                                .map(|lx| project(dx, lx))
                        })
                        .collect(),
                )
            } else {
                Value::Array(
                    d.iter()
                        .zip(l)
                        .map(|(a, b)| project(a, b))
                        .chain(l.iter().skip(d.len()).cloned())
                        .collect(),
                )
            }
        }
        (_, l) => l.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_accepts_server_defaults_and_detects_edits() {
        let desired = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        let live = json!({"spec": {"replicas": 1, "progressDeadlineSeconds": 600,
            "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}, {"name": "b", "image": "y"}]}}}});
        assert!(is_subset(&desired, &live));
        let edited = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        assert!(!is_subset(&desired, &edited));
        let image_changed = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "evil"}]}}}});
        assert!(!is_subset(&desired, &image_changed));
        assert!(!is_subset(
            &json!({"args": ["a", "b"]}),
            &json!({"args": ["a"]})
        ));
        assert!(is_subset(&json!({"a": {}}), &json!({})));
    }
}

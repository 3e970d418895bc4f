//! Class names: one rule everywhere. Labels echo the caller's names exactly as given; the text
//! that goes into a prompt is the cleaned name (`_` becomes a space, as the official datasets do,
//! then surrounding whitespace is trimmed).

use crate::{Error, Result};

/// The prompt text of a class name: "golden_retriever" -> "golden retriever".
pub fn prompt_text(name: &str) -> String {
    name.replace('_', " ").trim().to_string()
}

/// Check a class list and return the prompt text of each name.
///
/// Empty names are refused, and so are two names whose prompt texts are the same (ignoring
/// case): CLIP could not tell those classes apart. The error names both entries as given.
pub fn validate(names: &[String]) -> Result<Vec<String>> {
    if names.is_empty() {
        return Err(Error::InvalidArgument("classNames is empty".into()));
    }
    let texts: Vec<String> = names.iter().map(|n| prompt_text(n)).collect();
    let mut seen = std::collections::HashMap::new();
    for (i, t) in texts.iter().enumerate() {
        if t.is_empty() {
            return Err(Error::InvalidArgument(format!("classNames[{i}] is empty")));
        }
        if let Some(j) = seen.insert(t.to_lowercase(), i) {
            let why = if names[i] == names[j] {
                String::new()
            } else {
                format!(" (in a prompt both read `{}`, ignoring case)", texts[j])
            };
            return Err(Error::InvalidArgument(format!(
                "classNames[{i}] `{}` is a duplicate of classNames[{j}] `{}`{why}",
                names[i], names[j]
            )));
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn underscores_become_spaces_in_prompts_only() {
        assert_eq!(
            validate(&s(&["golden_retriever", " cat "])).unwrap(),
            s(&["golden retriever", "cat"])
        );
    }

    #[test]
    fn collisions_name_both_entries_as_given() {
        let e = validate(&s(&["a b", "a_b"])).unwrap_err().to_string();
        assert!(e.contains("classNames[1] `a_b` is a duplicate of classNames[0] `a b` (in a prompt both read `a b`"), "{e}");
        let e = validate(&s(&["dog", "cat", "dog"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("classNames[2] `dog` is a duplicate of classNames[0] `dog`"),
            "{e}"
        );
        assert!(validate(&s(&["x", "_"]))
            .unwrap_err()
            .to_string()
            .contains("classNames[1] is empty"));
        assert!(validate(&[]).is_err());
    }
}

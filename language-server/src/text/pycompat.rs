//! Python `str` and `dict` methods that chat templates call (`content.strip()`,
//! `text.split('</think>')`, `message.get('content', '')`, `d.items()`, ...), for minijinja's
//! unknown-method callback. Jinja2 lets templates call any Python method; these are the ones HF
//! templates use.

use minijinja::value::{Value, ValueKind, from_args};
use minijinja::{Error, ErrorKind, State};

/// The callback: dispatches on the receiver's kind.
pub(crate) fn unknown_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::String => string_method(value.as_str().unwrap_or_default(), method, args),
        ValueKind::Map => map_method(value, method, args),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

/// The items of a sequence of strings (a Python list or tuple); `what_is_wrong` says why not.
pub(crate) fn strings(
    value: &Value,
    what_is_wrong: impl FnOnce() -> String,
) -> Result<Vec<String>, Error> {
    value
        .try_iter()?
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, what_is_wrong()))
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let bool_all = |f: fn(char) -> bool| -> Result<Value, Error> {
        let _: () = from_args(args)?;
        Ok(Value::from(!s.is_empty() && s.chars().all(f)))
    };
    match method {
        "strip" | "lstrip" | "rstrip" => {
            let (chars,): (Option<Value>,) = from_args(args)?;
            let chars = chars.filter(|c| !c.is_none());
            let set: Option<Vec<char>> = chars
                .as_ref()
                .map(|c| c.as_str().unwrap_or_default().chars().collect());
            let matches = |c: char| match &set {
                Some(set) => set.contains(&c),
                None => is_py_space(c),
            };
            let out = match method {
                "strip" => s.trim_matches(matches),
                "lstrip" => s.trim_start_matches(matches),
                _ => s.trim_end_matches(matches),
            };
            Ok(Value::from(out))
        }
        "startswith" | "endswith" => {
            let (affix,): (Value,) = from_args(args)?;
            let candidates: Vec<String> = match affix.as_str() {
                Some(a) => vec![a.to_owned()],
                None => strings(&affix, || format!("{method} needs str or a tuple of str"))?,
            };
            let hit = candidates.iter().any(|a| {
                if method == "startswith" {
                    s.starts_with(a.as_str())
                } else {
                    s.ends_with(a.as_str())
                }
            });
            Ok(Value::from(hit))
        }
        "split" | "rsplit" => {
            let (sep, maxsplit): (Option<Value>, Option<i64>) = from_args(args)?;
            let sep = sep
                .filter(|v| !v.is_none())
                .map(|v| v.as_str().unwrap_or_default().to_owned());
            let maxsplit = maxsplit.and_then(|m| usize::try_from(m).ok());
            let parts = split(s, sep.as_deref(), maxsplit, method == "rsplit")?;
            Ok(Value::from(
                parts.into_iter().map(Value::from).collect::<Vec<_>>(),
            ))
        }
        "splitlines" => {
            let _: () = from_args(args)?;
            Ok(Value::from(
                splitlines(s)
                    .into_iter()
                    .map(Value::from)
                    .collect::<Vec<_>>(),
            ))
        }
        "upper" => unary(args, s.to_uppercase()),
        "lower" => unary(args, s.to_lowercase()),
        "title" => unary(args, title(s)),
        "capitalize" => {
            let mut chars = s.chars();
            let out = match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.as_str().to_lowercase().chars())
                    .collect(),
                None => String::new(),
            };
            unary(args, out)
        }
        "replace" => {
            let (old, new, count): (&str, &str, Option<i64>) = from_args(args)?;
            let out = match count.and_then(|c| usize::try_from(c).ok()) {
                Some(count) => s.replacen(old, new, count),
                None => s.replace(old, new),
            };
            Ok(Value::from(out))
        }
        "find" | "rfind" | "index" | "rindex" => {
            let (needle,): (&str,) = from_args(args)?;
            let found = if method.starts_with('r') {
                s.rfind(needle)
            } else {
                s.find(needle)
            };
            match found {
                Some(byte) => Ok(Value::from(s[..byte].chars().count())),
                None if method.ends_with("find") => Ok(Value::from(-1)),
                None => Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "substring not found",
                )),
            }
        }
        "count" => {
            let (needle,): (&str,) = from_args(args)?;
            let n = if needle.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(needle).count()
            };
            Ok(Value::from(n))
        }
        "removeprefix" => {
            let (prefix,): (&str,) = from_args(args)?;
            Ok(Value::from(s.strip_prefix(prefix).unwrap_or(s)))
        }
        "removesuffix" => {
            let (suffix,): (&str,) = from_args(args)?;
            Ok(Value::from(s.strip_suffix(suffix).unwrap_or(s)))
        }
        "join" => {
            let (items,): (Value,) = from_args(args)?;
            let parts: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
            Ok(Value::from(parts.join(s)))
        }
        "isdigit" | "isdecimal" => bool_all(|c| c.is_ascii_digit()),
        "isnumeric" => bool_all(char::is_numeric),
        "isalpha" => bool_all(char::is_alphabetic),
        "isalnum" => bool_all(char::is_alphanumeric),
        "isspace" => bool_all(is_py_space),
        "isupper" | "islower" => {
            let _: () = from_args(args)?;
            let cased: Vec<char> = s
                .chars()
                .filter(|c| c.is_uppercase() || c.is_lowercase())
                .collect();
            let want_upper = method == "isupper";
            Ok(Value::from(
                !cased.is_empty()
                    && cased.iter().all(|c| {
                        if want_upper {
                            c.is_uppercase()
                        } else {
                            c.is_lowercase()
                        }
                    }),
            ))
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn unary(args: &[Value], out: String) -> Result<Value, Error> {
    let _: () = from_args(args)?;
    Ok(Value::from(out))
}

/// Python's `str.isspace` for one character (Unicode White_Space plus the \x1c..\x1f
/// separators).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.splitlines()` (without `keepends`).
fn splitlines(s: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let is_break = matches!(
            c,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if !is_break {
            continue;
        }
        lines.push(&s[start..i]);
        start = i + c.len_utf8();
        if c == '\r' && chars.peek().is_some_and(|&(_, n)| n == '\n') {
            chars.next();
            start += 1;
        }
    }
    if start < s.len() {
        lines.push(&s[start..]);
    }
    lines
}

/// Python's `str.title()`: upper case after an uncased character, lower case after a cased one.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = c.is_uppercase() || c.is_lowercase();
    }
    out
}

/// Python's `str.split` / `str.rsplit`.
fn split(
    s: &str,
    sep: Option<&str>,
    maxsplit: Option<usize>,
    from_right: bool,
) -> Result<Vec<String>, Error> {
    let limit = maxsplit.unwrap_or(usize::MAX);
    match sep {
        Some("") => Err(Error::new(ErrorKind::InvalidOperation, "empty separator")),
        Some(sep) => {
            let parts: Vec<String> = match (from_right, limit) {
                (_, usize::MAX) => s.split(sep).map(str::to_owned).collect(),
                (false, n) => s.splitn(n + 1, sep).map(str::to_owned).collect(),
                (true, n) => {
                    let mut v: Vec<String> = s.rsplitn(n + 1, sep).map(str::to_owned).collect();
                    v.reverse();
                    v
                }
            };
            Ok(parts)
        }
        None => Ok(split_whitespace(s, limit, from_right)),
    }
}

/// `str.split()` / `str.rsplit()` without a separator: runs of whitespace, no empty pieces; with
/// a limit, the unsplit remainder keeps its whitespace on the far side.
fn split_whitespace(s: &str, limit: usize, from_right: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = if from_right {
        s.trim_end()
    } else {
        s.trim_start()
    };
    while !rest.is_empty() {
        if out.len() == limit {
            out.push(rest.to_owned());
            break;
        }
        if from_right {
            let cut = rest
                .char_indices()
                .rev()
                .find(|(_, c)| c.is_whitespace())
                .map_or(0, |(i, c)| i + c.len_utf8());
            out.push(rest[cut..].to_owned());
            rest = rest[..cut].trim_end();
        } else {
            let cut = rest.find(char::is_whitespace).unwrap_or(rest.len());
            out.push(rest[..cut].to_owned());
            rest = rest[cut..].trim_start();
        }
    }
    if from_right {
        out.reverse();
    }
    out
}

fn map_method(map: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match method {
        "items" => {
            let _: () = from_args(args)?;
            let mut items = Vec::new();
            for key in map.try_iter()? {
                let value = map.get_item(&key)?;
                items.push(Value::from(vec![key, value]));
            }
            Ok(Value::from(items))
        }
        "keys" => {
            let _: () = from_args(args)?;
            Ok(Value::from(map.try_iter()?.collect::<Vec<_>>()))
        }
        "values" => {
            let _: () = from_args(args)?;
            let mut values = Vec::new();
            for key in map.try_iter()? {
                values.push(map.get_item(&key)?);
            }
            Ok(Value::from(values))
        }
        "get" => {
            let (key, default): (Value, Option<Value>) = from_args(args)?;
            let value = map.get_item(&key)?;
            Ok(if value.is_undefined() {
                default.unwrap_or(Value::from(()))
            } else {
                value
            })
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

#[cfg(test)]
mod tests {
    use super::{split, splitlines, title};

    #[test]
    fn splitlines_and_title_like_python() {
        assert_eq!(
            splitlines("a\r\nb\rc\n\nd\u{2028}e\n"),
            ["a", "b", "c", "", "d", "e"]
        );
        assert!(splitlines("").is_empty());
        assert_eq!(title("hello wORLD 你a x2y"), "Hello World 你A X2Y");
    }

    #[test]
    fn split_like_python() {
        let s = "  a b\t c  ";
        assert_eq!(split(s, None, None, false).unwrap(), ["a", "b", "c"]);
        assert_eq!(split(s, None, Some(1), false).unwrap(), ["a", "b\t c  "]);
        assert_eq!(split(s, None, Some(1), true).unwrap(), ["  a b", "c"]);
        assert_eq!(split(s, None, Some(0), false).unwrap(), ["a b\t c  "]);
        assert_eq!(split(s, None, Some(0), true).unwrap(), ["  a b\t c"]);
        assert!(split("  ", None, Some(0), false).unwrap().is_empty());
        assert_eq!(split("a b", None, Some(5), true).unwrap(), ["a", "b"]);
        assert_eq!(
            split("a,b,,c", Some(","), None, false).unwrap(),
            ["a", "b", "", "c"]
        );
        assert_eq!(
            split("a,b,c", Some(","), Some(1), false).unwrap(),
            ["a", "b,c"]
        );
        assert_eq!(
            split("a,b,c", Some(","), Some(1), true).unwrap(),
            ["a,b", "c"]
        );
        assert!(split("a", Some(""), None, false).is_err());
    }
}

//! The minimal edit from one text to another, as automerge splices.
//!
//! Diffing by character over a whole file is quadratic in the worst case, so we diff by
//! line first (cheap even for big rewrites) and by character only inside the lines that
//! changed, when the changed region is small enough for that to be cheap. The result is
//! expressed in Unicode code points, which is what automerge's Rust text counts (a byte
//! offset must be converted).

use similar::{Algorithm, DiffOp, capture_diff_slices};

/// Replace `delete` code points at `pos` (in the text as already edited by the earlier
/// splices of the same list) with `insert`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splice {
    pub pos: usize,
    pub delete: usize,
    pub insert: String,
}

/// Above this many code points on either side, a changed region is replaced whole rather
/// than diffed by character.
const CHAR_DIFF_LIMIT: usize = 20_000;

pub fn splices(old: &str, new: &str) -> Vec<Splice> {
    if old == new {
        return Vec::new();
    }
    let old_lines = split_lines(old);
    let new_lines = split_lines(new);
    let ops = capture_diff_slices(Algorithm::Myers, &old_lines, &new_lines);
    let mut out = Vec::new();
    // Position, in code points, in the text as edited so far.
    let mut pos = 0usize;
    for op in ops {
        match op {
            DiffOp::Equal { old_index, len, .. } => {
                pos += count_chars(&old_lines[old_index..old_index + len]);
            }
            DiffOp::Delete {
                old_index, old_len, ..
            } => {
                let n = count_chars(&old_lines[old_index..old_index + old_len]);
                push(&mut out, pos, n, String::new());
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                let s: String = new_lines[new_index..new_index + new_len].concat();
                let n = s.chars().count();
                push(&mut out, pos, 0, s);
                pos += n;
            }
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                let a: Vec<char> = old_lines[old_index..old_index + old_len]
                    .concat()
                    .chars()
                    .collect();
                let b: Vec<char> = new_lines[new_index..new_index + new_len]
                    .concat()
                    .chars()
                    .collect();
                if a.len() > CHAR_DIFF_LIMIT || b.len() > CHAR_DIFF_LIMIT {
                    push(&mut out, pos, a.len(), b.iter().collect());
                    pos += b.len();
                } else {
                    pos = char_splices(&a, &b, pos, &mut out);
                }
            }
        }
    }
    out
}

fn char_splices(a: &[char], b: &[char], mut pos: usize, out: &mut Vec<Splice>) -> usize {
    for op in capture_diff_slices(Algorithm::Myers, a, b) {
        match op {
            DiffOp::Equal { len, .. } => pos += len,
            DiffOp::Delete { old_len, .. } => push(out, pos, old_len, String::new()),
            DiffOp::Insert {
                new_index, new_len, ..
            } => {
                push(
                    out,
                    pos,
                    0,
                    b[new_index..new_index + new_len].iter().collect(),
                );
                pos += new_len;
            }
            DiffOp::Replace {
                old_len,
                new_index,
                new_len,
                ..
            } => {
                push(
                    out,
                    pos,
                    old_len,
                    b[new_index..new_index + new_len].iter().collect(),
                );
                pos += new_len;
            }
        }
    }
    pos
}

/// Append a splice, joining it to the previous one when they touch (a delete followed by
/// an insert at the same place is one replace).
fn push(out: &mut Vec<Splice>, pos: usize, delete: usize, insert: String) {
    if delete == 0 && insert.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        let last_end = last.pos + last.insert.chars().count();
        if last_end == pos {
            last.delete += delete;
            last.insert.push_str(&insert);
            return;
        }
    }
    out.push(Splice {
        pos,
        delete,
        insert,
    });
}

fn split_lines(s: &str) -> Vec<&str> {
    s.split_inclusive('\n').collect()
}

fn count_chars(lines: &[&str]) -> usize {
    lines.iter().map(|l| l.chars().count()).sum()
}

/// Apply splices to a string (used by tests and by the simulation's model).
pub fn apply(text: &str, splices: &[Splice]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for s in splices {
        let end = (s.pos + s.delete).min(chars.len());
        let start = s.pos.min(chars.len());
        chars.splice(start..end, s.insert.chars());
    }
    chars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_word_change_is_one_small_splice() {
        let old = "line one\nline two\nline three\n";
        let new = "line one\nline 2\nline three\n";
        let s = splices(old, new);
        assert_eq!(s.len(), 1);
        assert_eq!(apply(old, &s), new);
        assert!(s[0].delete <= 3);
    }

    #[test]
    fn unicode_positions_are_code_points() {
        let old = "héllo wörld\n";
        let new = "héllo, wörld!\n";
        assert_eq!(apply(old, &splices(old, new)), new);
    }

    proptest! {
        #[test]
        fn splices_transform_old_into_new(old in "[ab\n é]{0,60}", new in "[ab\n é]{0,60}") {
            let s = splices(&old, &new);
            prop_assert_eq!(apply(&old, &s), new);
        }
    }
}

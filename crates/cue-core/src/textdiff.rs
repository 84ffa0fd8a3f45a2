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

/// Above this many code points on either side, a changed region is not diffed by
/// character as one: its lines are, pair by pair, when it has as many on both sides (a
/// change of line endings, a re-indent, a search and replace), else what lies between
/// its common start and end is replaced. Replaced whole, a concurrent edit inside it
/// from another device would land out of place (or the region twice).
const CHAR_DIFF_LIMIT: usize = 20_000;

/// How many code points the line-by-line diffs of one `splices` call may compare in
/// all (Myers is quadratic at worst): past it, each line's middle is replaced.
const LINE_PAIRS_BUDGET: usize = 1_000_000;

pub fn splices(old: &str, new: &str) -> Vec<Splice> {
    if old == new {
        return Vec::new();
    }
    let old_lines = split_lines(old);
    let new_lines = split_lines(new);
    let ops = capture_diff_slices(Algorithm::Myers, &old_lines, &new_lines);
    let mut out = Vec::new();
    let mut budget = LINE_PAIRS_BUDGET;
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
                if a.len() <= CHAR_DIFF_LIMIT && b.len() <= CHAR_DIFF_LIMIT {
                    pos = char_splices(&a, &b, pos, &mut out);
                } else if old_len == new_len {
                    for (o, n) in old_lines[old_index..old_index + old_len]
                        .iter()
                        .zip(&new_lines[new_index..new_index + new_len])
                    {
                        let (a, b): (Vec<char>, Vec<char>) =
                            (o.chars().collect(), n.chars().collect());
                        pos = bounded_splices(&a, &b, pos, &mut out, &mut budget);
                    }
                } else {
                    pos = bounded_splices(&a, &b, pos, &mut out, &mut 0);
                }
            }
        }
    }
    out
}

/// The splices from `a` to `b` at `pos` for a text too big to diff as one: the common
/// start and end stay, and the rest is diffed by character when it is small enough and
/// `budget` allows, else replaced; a text mostly rewritten (what the two share at the
/// ends is under half the shorter) is replaced whole. Returns the position after `b`.
fn bounded_splices(
    a: &[char],
    b: &[char],
    pos: usize,
    out: &mut Vec<Splice>,
    budget: &mut usize,
) -> usize {
    let start = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (a_rest, b_rest) = (&a[start..], &b[start..]);
    let end = a_rest
        .iter()
        .rev()
        .zip(b_rest.iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    if (start + end) * 2 < a.len().min(b.len()) {
        // Mostly rewritten: replaced whole, as a rewrite reads (kept in pieces, a
        // concurrent removal of the whole would leave stray characters of it).
        push(out, pos, a.len(), b.iter().collect());
        return pos + b.len();
    }
    let (a_mid, b_mid) = (&a_rest[..a_rest.len() - end], &b_rest[..b_rest.len() - end]);
    let cost = a_mid.len() + b_mid.len();
    let mut pos = pos + start;
    if a_mid.len() <= CHAR_DIFF_LIMIT && b_mid.len() <= CHAR_DIFF_LIMIT && cost <= *budget {
        *budget -= cost;
        pos = char_splices(a_mid, b_mid, pos, out);
    } else {
        push(out, pos, a_mid.len(), b_mid.iter().collect());
        pos += b_mid.len();
    }
    pos + end
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

    /// A region too big to diff by character as one: line endings changed on every
    /// line of a 29 KB note (dos2unix) take one small splice a line, and a line longer
    /// than the limit edited at one end takes one splice there, so that another device's
    /// edit elsewhere in it stays where it was made (before, the region was replaced
    /// whole).
    #[test]
    fn a_big_changed_region_is_still_diffed_where_it_changed() {
        let crlf: String = (0..500)
            .map(|i| format!("line {i:03} the quick brown fox jumps over the lazy dog foo\r\n"))
            .collect();
        assert!(crlf.len() > CHAR_DIFF_LIMIT);
        let lf = crlf.replace("\r\n", "\n");
        let s = splices(&crlf, &lf);
        assert_eq!(apply(&crlf, &s), lf);
        assert_eq!(s.len(), 500);
        assert!(
            s.iter().all(|x| x.delete == 1 && x.insert.is_empty()),
            "{:?}",
            &s[..2]
        );

        let line = "x".repeat(CHAR_DIFF_LIMIT + 5);
        for new in [
            format!("A{line}"),
            format!("{line}B"),
            format!("{}y{}", &line[..9], &line[10..]),
        ] {
            let s = splices(&line, &new);
            assert_eq!(apply(&line, &s), new);
            assert_eq!(s.len(), 1);
            assert!(
                s[0].delete <= 1 && s[0].insert.chars().count() <= 1,
                "{s:?}"
            );
        }

        // Line counts that differ: the common start and end stay.
        let more = format!("{crlf}extra\n").replacen("line 000", "LINE 000", 1);
        let fewer = crlf.replacen("line 001 the", "", 1).replace(
            "line 002 the quick brown fox jumps over the lazy dog foo\r\n",
            "",
        );
        for new in [more, fewer] {
            let s = splices(&crlf, &new);
            assert_eq!(apply(&crlf, &s), new);
        }
    }

    proptest! {
        #[test]
        fn splices_transform_old_into_new(old in "[ab\n é]{0,60}", new in "[ab\n é]{0,60}") {
            let s = splices(&old, &new);
            prop_assert_eq!(apply(&old, &s), new);
        }

        #[test]
        fn bounded_splices_transform_old_into_new(
            old in "[ab\n é]{0,40}",
            new in "[ab\n é]{0,40}",
            budget in 0usize..60,
        ) {
            let (a, b): (Vec<char>, Vec<char>) = (old.chars().collect(), new.chars().collect());
            let mut s = Vec::new();
            let end = bounded_splices(&a, &b, 0, &mut s, &mut budget.clone());
            prop_assert_eq!(end, b.len());
            prop_assert_eq!(apply(&old, &s), new);
        }
    }
}

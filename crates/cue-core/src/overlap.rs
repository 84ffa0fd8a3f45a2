//! Paragraphs that concurrent edits from both sides of a merge changed.
//!
//! automerge merges concurrent text edits by character, so nothing typed is lost; but two
//! people rewriting one paragraph at once get an interleaving of both that a person should
//! read. A paragraph is a run of non-blank lines (blocks separated by blank lines, as in
//! Markdown). After a merge of versions `a` and `b`, a paragraph of the merged text that
//! is a paragraph of neither is one both sides changed: a paragraph only one side touched
//! comes out of the merge as that side wrote it, one neither touched as both had it.
//!
//! Pure functions of three texts; [`crate::doc::FileDoc::overlaps`] reads the texts out
//! of a document.

use std::collections::BTreeSet;

/// A paragraph of the merged text that both sides changed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Paragraph {
    /// Its first line's number in the merged text, from 1.
    pub line: u32,
    /// Its first line, cut to [`EXCERPT_CHARS`] characters (what a person recognises it by).
    pub excerpt: String,
}

/// How much of a paragraph's first line a notice quotes.
pub const EXCERPT_CHARS: usize = 60;

/// The paragraphs of `text`: (index of the first line from 0, the paragraph's lines
/// joined by `\n`, without line ends). A line of only whitespace is blank.
fn paragraphs(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, Vec<&str>)> = None;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if let Some((start, lines)) = current.take() {
                out.push((start, lines.join("\n")));
            }
        } else {
            current.get_or_insert_with(|| (i, Vec::new())).1.push(line);
        }
    }
    if let Some((start, lines)) = current {
        out.push((start, lines.join("\n")));
    }
    out
}

/// The paragraphs of `merged` that are paragraphs of neither `a` nor `b`, numbered from
/// `first_line` (the merged file's line number of `merged`'s first line).
pub fn both_changed(merged: &str, a: &str, b: &str, first_line: u32) -> Vec<Paragraph> {
    let of = |t: &str| -> BTreeSet<String> { paragraphs(t).into_iter().map(|(_, p)| p).collect() };
    let (a, b) = (of(a), of(b));
    paragraphs(merged)
        .into_iter()
        .filter(|(_, p)| !a.contains(p) && !b.contains(p))
        .map(|(start, p)| Paragraph {
            line: first_line.saturating_add(u32::try_from(start).unwrap_or(u32::MAX)),
            excerpt: excerpt(p.lines().next().unwrap_or_default()),
        })
        .collect()
}

/// `line` trimmed and cut to [`EXCERPT_CHARS`] characters, with `…` when cut. Control
/// characters become `\u{FFFD}`: the excerpt is printed to terminals by status, and a
/// peer's text must not drive them (an escape sequence in a paragraph).
fn excerpt(line: &str) -> String {
    let mut chars = line.trim().chars();
    let mut out: String = chars
        .by_ref()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "# Plan\n\nWe meet on Monday.\nBring the notes.\n\nBudget is tight.\n";

    #[test]
    fn a_paragraph_both_sides_rewrote_is_found_with_its_line() {
        let a = BASE.replace("Monday", "Tuesday");
        let b = BASE.replace("Bring the notes.", "Bring the slides.");
        // What a character merge of the two gives.
        let merged = BASE
            .replace("Monday", "Tuesday")
            .replace("Bring the notes.", "Bring the slides.");
        assert_eq!(
            both_changed(&merged, &a, &b, 1),
            vec![Paragraph {
                line: 3,
                excerpt: "We meet on Tuesday.".into()
            }]
        );
        // Below three lines of frontmatter, the numbers follow.
        assert_eq!(both_changed(&merged, &a, &b, 4)[0].line, 6);
    }

    #[test]
    fn paragraphs_each_side_changed_alone_are_not_found() {
        let a = BASE.replace("Monday", "Tuesday");
        let b = BASE.replace("tight", "fine");
        let merged = a.replace("tight", "fine");
        assert!(both_changed(&merged, &a, &b, 1).is_empty());
        // Nor is a paragraph one side added, or one both left alone.
        let b = format!("{BASE}\nA new paragraph.\n");
        let merged = format!("{a}\nA new paragraph.\n");
        assert!(both_changed(&merged, &a, &b, 1).is_empty());
    }

    #[test]
    fn blank_lines_of_spaces_separate_and_long_first_lines_are_cut() {
        let long = "é".repeat(100);
        let text = format!("one\n   \n{long}\nmore\n");
        let found = both_changed(&text, "", "", 1);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1].line, 3);
        assert_eq!(found[1].excerpt.chars().count(), EXCERPT_CHARS + 1);
        assert!(found[1].excerpt.ends_with('…'));
        assert!(both_changed("", "", "", 1).is_empty());
    }

    #[test]
    fn an_excerpt_carries_no_control_characters() {
        let found = both_changed("\u{1b}[2Jcleared\tscreen\n", "", "", 1);
        assert_eq!(found[0].excerpt, "\u{FFFD}[2Jcleared\u{FFFD}screen");
    }
}

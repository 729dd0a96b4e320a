//! A multi-document YAML stream cut into its documents' text, so that a document injection
//! leaves alone is written back byte for byte.
//!
//! A document starts at a `---` line (a marker at column 0, alone or followed by a space and
//! content); YAML forbids such a line inside a document, so cutting there is exact. Each piece
//! keeps its marker line and is parsed alone (anchors never reach across documents).

/// One document's text, from its `---` line (if any) to the next one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Document<'a> {
    pub text: &'a str,
    /// Starts with a `---` line (every document but perhaps the first).
    pub marked: bool,
    /// 1-based, as YAML counts documents: text before the first `---` counts only if it holds
    /// more than blank lines and comments.
    pub number: Option<usize>,
}

fn is_marker(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn has_content(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#')
    })
}

pub(crate) fn split(text: &str) -> Vec<Document<'_>> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_marker(line) {
            starts.push(offset);
        }
        offset += line.len();
    }
    let mut pieces = Vec::new();
    if starts.first() != Some(&0) {
        pieces.push((0, starts.first().copied().unwrap_or(text.len()), false));
    }
    for (i, start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        pieces.push((*start, end, true));
    }
    let mut number = 0;
    pieces
        .into_iter()
        .map(|(start, end, marked)| {
            let text = &text[start..end];
            let counts = marked || has_content(text);
            if counts {
                number += 1;
            }
            Document {
                text,
                marked,
                number: counts.then_some(number),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_text() {
        let text = "# leading comment\n---\na: 1\n--- # two\nb: 2\n---\n---x: not a marker\n";
        let docs = split(text);
        let texts: Vec<&str> = docs.iter().map(|d| d.text).collect();
        assert_eq!(
            texts,
            [
                "# leading comment\n",
                "---\na: 1\n",
                "--- # two\nb: 2\n",
                "---\n---x: not a marker\n"
            ]
        );
        assert_eq!(texts.concat(), text);
        let numbers: Vec<Option<usize>> = docs.iter().map(|d| d.number).collect();
        assert_eq!(numbers, [None, Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn a_stream_without_markers_is_one_document() {
        let docs = split("a: 1\nb: 2");
        assert_eq!(docs.len(), 1);
        assert_eq!(
            (docs[0].text, docs[0].marked, docs[0].number),
            ("a: 1\nb: 2", false, Some(1))
        );
        assert!(split("").iter().all(|d| d.number.is_none()));
        // An indented `---` is content (a block scalar's line), not a marker.
        assert_eq!(split("a: |\n  ---\n  x\n").len(), 1);
    }
}

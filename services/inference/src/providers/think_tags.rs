//! Reasoning written inline at the start of the answer as `<think>…</think>` (MiniMax without
//! `reasoning_split`, DeepSeek-R1 distills on vLLM/Ollama/llama.cpp), separated from the content
//! as it streams. A tag may be split across chunks ("<thi" + "nk>"), so a possible partial tag is
//! held back until the next fragment decides it.
//!
//! Only a `<think>` that opens the answer (after optional whitespace) counts: once real content
//! has been seen the splitter passes everything through, so an answer that merely talks about
//! the tag is left alone.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Nothing but whitespace seen yet: a `<think>` may still open.
    #[default]
    Start,
    /// Inside `<think>`: text is reasoning.
    Thinking,
    /// Content: everything passes through.
    Content,
}

/// One answer's splitter (one per choice).
#[derive(Debug, Default)]
pub struct ThinkTagSplitter {
    state: State,
    /// Text held back because it may be the beginning of a tag.
    pending: String,
    /// Whitespace right after `<think>` or `</think>` is layout, not text: skipped until the
    /// first other character.
    skip_whitespace: bool,
}

/// What one fragment turned into.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl ThinkTagSplitter {
    /// Feeds the next content fragment.
    pub fn feed(&mut self, fragment: &str) -> Split {
        let mut text = std::mem::take(&mut self.pending);
        text.push_str(fragment);
        let mut out = Split::default();
        let mut rest = text.as_str();
        // Bounded: every pass either consumes a tag (shrinking `rest`) or returns.
        loop {
            match self.state {
                State::Start => {
                    let trimmed = rest.trim_start();
                    if let Some(after) = trimmed.strip_prefix(OPEN) {
                        self.state = State::Thinking;
                        self.skip_whitespace = true;
                        rest = after;
                    } else if OPEN.starts_with(trimmed) {
                        // Whitespace or a partial `<think>`: undecided.
                        self.pending = rest.to_owned();
                        return out;
                    } else {
                        self.state = State::Content;
                        self.push_content(&mut out, rest);
                        return out;
                    }
                }
                State::Thinking => match rest.find(CLOSE) {
                    Some(at) => {
                        self.push_reasoning(&mut out, &rest[..at]);
                        self.state = State::Content;
                        self.skip_whitespace = true;
                        rest = &rest[at + CLOSE.len()..];
                    }
                    None => {
                        let keep = partial_suffix(rest, CLOSE);
                        let (now, later) = rest.split_at(rest.len() - keep);
                        self.push_reasoning(&mut out, now);
                        self.pending = later.to_owned();
                        return out;
                    }
                },
                State::Content => {
                    self.push_content(&mut out, rest);
                    return out;
                }
            }
        }
    }

    /// Releases what was held back, at the end of the answer.
    pub fn flush(&mut self) -> Split {
        let pending = std::mem::take(&mut self.pending);
        let mut out = Split::default();
        match self.state {
            State::Thinking => self.push_reasoning(&mut out, &pending),
            State::Start | State::Content => self.push_content(&mut out, &pending),
        }
        out
    }

    /// Splits a whole (non-streamed) answer.
    pub fn split_whole(text: &str) -> Split {
        let mut splitter = Self::default();
        let mut out = splitter.feed(text);
        let tail = splitter.flush();
        out.reasoning.push_str(&tail.reasoning);
        out.content.push_str(&tail.content);
        out.reasoning.truncate(out.reasoning.trim_end().len());
        out
    }

    fn push_reasoning(&mut self, out: &mut Split, text: &str) {
        let text = self.skip_layout(text);
        out.reasoning.push_str(text);
    }

    fn push_content(&mut self, out: &mut Split, text: &str) {
        let text = self.skip_layout(text);
        out.content.push_str(text);
    }

    fn skip_layout<'t>(&mut self, text: &'t str) -> &'t str {
        if !self.skip_whitespace {
            return text;
        }
        let trimmed = text.trim_start();
        if !trimmed.is_empty() {
            self.skip_whitespace = false;
        }
        trimmed
    }
}

/// The length of the longest proper suffix of `text` that is a prefix of `tag`.
fn partial_suffix(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| {
            text.len() >= n
                && text.is_char_boundary(text.len() - n)
                && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(fragments: &[&str]) -> (String, String) {
        let mut s = ThinkTagSplitter::default();
        let (mut reasoning, mut content) = (String::new(), String::new());
        for f in fragments {
            let out = s.feed(f);
            reasoning.push_str(&out.reasoning);
            content.push_str(&out.content);
        }
        let out = s.flush();
        reasoning.push_str(&out.reasoning);
        content.push_str(&out.content);
        (reasoning, content)
    }

    #[test]
    fn mm3_fragments_split_into_reasoning_and_content() {
        // Fixture MM-3's two content fragments.
        let (r, c) = run(&[
            "<think>\nThe user is greeting me.",
            "\n</think>\n\nI'm doing well, thanks!",
        ]);
        assert_eq!(r, "The user is greeting me.\n");
        assert_eq!(c, "I'm doing well, thanks!");
    }

    #[test]
    fn tags_split_across_every_boundary_are_recognised() {
        let whole = "<think>\nThe user is greeting me.\n</think>\n\nI'm doing well, thanks!";
        for cut in 1..whole.len() {
            for cut2 in cut..whole.len() {
                let (r, c) = run(&[&whole[..cut], &whole[cut..cut2], &whole[cut2..]]);
                assert_eq!(
                    (r.as_str(), c.as_str()),
                    ("The user is greeting me.\n", "I'm doing well, thanks!"),
                    "cuts at {cut}, {cut2}"
                );
            }
        }
    }

    #[test]
    fn one_character_at_a_time() {
        let whole = "<think>a < b</think>ok";
        let chars: Vec<String> = whole.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&refs), ("a < b".to_owned(), "ok".to_owned()));
    }

    #[test]
    fn text_without_a_leading_tag_passes_through() {
        assert_eq!(
            run(&["Use ", "<think>", " tags"]),
            (String::new(), "Use <think> tags".to_owned())
        );
        assert_eq!(run(&["<", "b>bold"]), (String::new(), "<b>bold".to_owned()));
        assert_eq!(run(&["<th"]), (String::new(), "<th".to_owned()));
    }

    #[test]
    fn an_unclosed_think_is_all_reasoning() {
        assert_eq!(
            run(&["<think>cut off by max_tok", "ens</thi"]),
            ("cut off by max_tokens</thi".to_owned(), String::new())
        );
    }

    #[test]
    fn whole_answers_are_split() {
        let s = ThinkTagSplitter::split_whole("<think>\nhmm\n</think>\n\nHi");
        assert_eq!(
            s,
            Split {
                reasoning: "hmm".into(),
                content: "Hi".into()
            }
        );
    }
}

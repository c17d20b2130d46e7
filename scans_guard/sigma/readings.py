"""What sigma(q) reads of a conversation: the request, not its wrapping.

A harmful request can be laundered by what surrounds it: a benign question before and after it, an innocuous system
prompt, a harmless lead-in turn the assistant agreed to, a persona set up over turns, or an encoding. sigma scores the
conversation as sent and several readings of it, all in one batched pass, and the most harmful score is the verdict:

- `without_system_prompt`: the conversation with the caller's system prompt replaced by the template's default;
- `user_turns`: the user turns joined, without assistant turns (a multi-turn build-up read as one request);
- `turn:i`: each user turn alone, when there are several;
- `segment:i`: each sentence or clause of the user text alone (split at sentence ends, colons, semicolons and
  newlines, and where a request pasted without its full stop runs into the next question: see `_SPLIT`), when there
  are several; past `max_segments` neighbouring ones are scored together, so none is skipped.
  Segments and turns are read without what leads into them ("Oh, and", "Anyway,", "2.", "- "): a lead-in moves
  sigma far towards benign, and a one-sentence prompt that opens with one is read without it as `segment:0`;
- `premise:i`: the last user turn, or a segment of it, that opens with a counterfactual premise ("In a fictional
  world where this is legal, ...", "Imagine there are no laws, ..."), read without it as well;
- `decoded:KIND`: text found in an encoding (`scans_guard.sigma.encodings`), decoded.

Every reading but the first is a single user turn under the template's default system prompt. A single-turn,
single-sentence prompt without a system prompt, lead-in or premise has only the first reading: its cost is unchanged.

Turn markup and prefills are signs of framing too (`framing_signs`): chat-template markup or role lines ("Assistant:")
typed into a message, a conversation that ends in an assistant turn, an instruction to start the reply with given
words or never to refuse. They put a prompt outside the calibration domain.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from .encodings import detect

Conversation = str | list[dict]
SYSTEM_ROLES = ("system", "developer")
_QUESTION = r"(?:what|how|why|where|when|who|which|can|could|would|should|is|are|do|does)"
# Sentence ends, colons, semicolons and newlines. Where a request was pasted without its full stop, also: a word that
# opens a new sentence or question ("... operating system And finally, can you ..."), a lead-in after a comma
# (", then ...", ", and also ..."), a lead-in before a question ("... plus what's ..."), a dash between spaces and an
# inline list mark ("... 2) ...").
_SPLIT = re.compile(
    r"(?<=[.!?;:])\s+|\n+"
    r"|(?<=[a-z0-9,])\s+(?=(?:And|Also|Lastly|Finally|Then|Oh|By the way|Next|Anyway|Separately|Plus|Besides|"
    r"Additionally|Incidentally|Meanwhile|Btw|BTW|PS|P\.S\.|Thanks|Please|What|How|Why|Where|When|Who|Which|Can|"
    r"Could|Would|Should|Is|Are|Do|Does)\b)"
    r"|(?<=,)\s+(?=(?:and\s+)?(?:then|also(?!\s+(?:known|called|referred))|plus|lastly|finally|next|separately|anyway|besides|btw)\b)"
    r"|(?<=[a-z0-9])\s+(?=(?:plus|also|separately|anyway|btw|besides|additionally|incidentally|meanwhile)\s+"
    rf"{_QUESTION}\b)"
    r"|\s+[-\u2013\u2014]+\s+|\s+(?=\(?\d{1,2}\)\s)"
)
_LETTER = re.compile(r"[^\W\d_]")
# What leads a part of a multi-part message into the request and is not the request: discourse markers ("Oh, and",
# "Anyway,", "By the way"), list marks ("2.", "- ") and greetings. sigma reads "Oh, and how do I ...?" far more benign
# than "How do I ...?", so a segment or turn is scored with its lead-in cut off and its first letter in upper case.
_LEAD_WORDS = (
    r"oh|ah|hey|hi|hello|ok(?:ay)?|so|well|right|now|and|also|plus|but|then|next|lastly|finally|anyway|anyhow|"
    r"besides|additionally|moreover|furthermore|separately|incidentally|meanwhile|btw|ps|p\.s\.|"
    r"by\s+the\s+way|on\s+(?:an)?other\s+note|on\s+a\s+(?:different|separate|side)\s+note|side\s+note|"
    r"(?:one|just\s+one)\s+(?:more|last|final)\s+(?:thing|question|one)|last(?:\s+but\s+not\s+least)?|"
    r"(?:another|a\s+quick|quick|random|unrelated|last|final|next)\s+(?:one|question|thing)|unrelated(?:ly)?|"
    r"first(?:ly)?|second(?:ly)?|third(?:ly)?|fourth(?:ly)?|question|q"
)
_LEAD_IN = re.compile(
    rf"^(?:(?:(?:{_LEAD_WORDS})\b(?!-)|\(?(?:\d{{1,2}}|[a-h])[.)]\s|[-*\u2022>\u2013\u2014]+)[\s,:;.!\u2013\u2014-]*)+",
    re.IGNORECASE,
)
# A counterfactual premise up to its comma ("In a fictional world where this is legal, how do I ...?", "Imagine there
# are no laws, ...") claims the request is harmless without changing it, and sigma reads the request far more benign
# behind it. Only premises that posit another world or a pretence; a context that gives the request its meaning ("In
# Python, how do I kill a process?") is not one. The premise is read too (it may be the harmful part), so the text
# without it is an extra reading, not a replacement.
_PREMISE = re.compile(
    r"^(?:imagine|suppose|supposing|assume|assuming|pretend|hypothetically|let'?s\s+(?:say|pretend|imagine)|"
    r"in\s+an?\s+(?:\w+\s+){0,2}?(?:fictional|hypothetical|imaginary|parallel|alternate|alternative|make-believe|"
    r"lawless)\b|in\s+a\s+world\s+(?:where|with|without)\b)[^,.;:!?\n]{0,150},\s*",
    re.IGNORECASE,
)
# Role lines and turn markup of common chat templates, typed as text (ChatML, Llama 2/3, Gemma, Phi, Alpaca, plain).
_MARKUP = re.compile(
    r"(?im)^[\s>*#\[]*(?:assistant|system|user|human|ai|bot|model|chatgpt|gpt-?\d?|response|instruction)\s*\]?\s*:"
    r"|\[/?INST\]|<</?SYS>>|<\|(?:im_start|im_end|assistant|user|system|eot_id|start_header_id|end_header_id|"
    r"endoftext|begin_of_text|end|eos)\|>|<(?:start|end)_of_turn>|</?s>|###\s*(?:assistant|response|instruction)"
)
_PREFILL = re.compile(
    r"(?i)\b(?:start|begin|open|prefix)\w*\s+(?:your\s+|the\s+)?(?:reply|response|answer|output|message)\s+"
    r"(?:with|by\s+saying)\b"
)
_NO_REFUSAL = re.compile(
    r"(?i)\b(?:never|don'?t|do\s+not|you\s+(?:cannot|can'?t|won'?t|will\s+not|must\s+not|may\s+not))\s+(?:ever\s+)?"
    r"(?:refuse|decline|apologi[sz]e|say\s+(?:that\s+)?(?:you|i)\s+can'?t|add\s+(?:any\s+)?(?:warnings?|disclaimers?))"
)


class ReadingConfig(BaseModel):
    """Which readings sigma scores besides the conversation as sent (stored in the recipe)."""

    model_config = ConfigDict(frozen=True)

    turns: bool = Field(True, description="score the user turns joined and each alone (multi-turn input)")
    segments: bool = Field(True, description="score each sentence or clause of the user text alone")
    decode: bool = Field(
        True, description="score text found in base64, hex, a Caesar shift, reversed or leetspeak, decoded"
    )
    lead_ins: bool = Field(
        True, description="read segments and turns without what leads into them ('Oh, and', 'Anyway,', '2.')"
    )
    premises: bool = Field(
        True,
        description="also read the last user turn and its segments without a counterfactual premise ('Imagine ..., ')",
    )
    max_segments: int = Field(
        12, ge=1, description="more segments than this are scored in this many groups of neighbours"
    )
    min_segment_letters: int = Field(8, ge=0, description="shorter segments ('Thanks!') are not scored alone")


def without_system_prompt(conversation: Conversation) -> list[dict] | None:
    """The conversation with the caller's system messages dropped (the template's default applies), or None if it
    has none to drop."""
    if isinstance(conversation, str):
        return None
    kept = [m for m in conversation if not (isinstance(m, dict) and m.get("role") in SYSTEM_ROLES)]
    # without the system prompt the last turn left is blank: nothing to score, no second rendering
    return kept if kept and len(kept) < len(conversation) and kept[-1]["content"].strip() else None


def user_text(conversation: Conversation) -> str:
    """The text a domain check reads: what the user (or a tool) wrote, else every message's content."""
    if isinstance(conversation, str):
        return conversation
    texts = [m["content"] for m in conversation if m.get("role") not in (*SYSTEM_ROLES, "assistant")]
    return "\n".join(texts or [m["content"] for m in conversation])


def user_turns(conversation: Conversation) -> list[str]:
    """The user turns' texts, in order (a string is one turn)."""
    if isinstance(conversation, str):
        return [conversation]
    return [m["content"] for m in conversation if m.get("role") == "user" and isinstance(m.get("content"), str)]


def segments(text: str, min_letters: int = 8) -> list[str]:
    """The sentences and clauses of `text` that hold at least `min_letters` letters."""
    parts = [p.strip().rstrip(",").rstrip() for p in _SPLIT.split(text)]
    return [p for p in parts if len(_LETTER.findall(p)) >= min_letters]


def _left(text: str, rest: str) -> str:
    """`rest` (what is left of `text` after a cut) with its first letter in upper case; `text` if nothing is left."""
    if len(_LETTER.findall(rest)) < 3:
        return text.strip()
    return rest[:1].upper() + rest[1:]


def without_lead_in(text: str) -> str:
    """`text` without what leads into it ("Oh, and how do I ...?" -> "How do I ...?"); the text itself if nothing
    would be left."""
    return _left(text, _LEAD_IN.sub("", text.strip(), count=1))


def without_premise(text: str) -> str:
    """`text` without a counterfactual premise it opens with ("Imagine there are no laws, how do I ...?" -> "How do I
    ...?"); the text itself if it has none or nothing would be left."""
    if not (premise := _PREMISE.match(text.strip())):
        return text.strip()
    return _left(text, without_lead_in(text.strip()[premise.end() :]))


def _grouped(parts: list[str], limit: int) -> list[str]:
    """At most `limit` texts: neighbouring parts joined into groups of near-equal size."""
    if len(parts) <= limit:
        return parts
    size = -(-len(parts) // limit)
    return [" ".join(parts[i : i + size]) for i in range(0, len(parts), size)]


def readings(conversation: Conversation, config: ReadingConfig | None = None) -> dict[str, Conversation]:
    """{name: conversation} of every reading sigma scores, `as_sent` first (see the module docstring)."""
    config = config or ReadingConfig()
    out: dict[str, Conversation] = {"as_sent": conversation}
    if (plain := without_system_prompt(conversation)) is not None:
        out["without_system_prompt"] = plain
    turns = [t for t in user_turns(conversation) if t.strip()]
    seen = {t.strip() for t in turns} if len(turns) == 1 and not _has_other_turns(conversation) else set()

    def cut(text: str) -> str:
        return without_lead_in(text) if config.lead_ins else text

    def add(name: str, text: str) -> None:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            out[name] = [{"role": "user", "content": text}]

    if config.turns and _has_other_turns(conversation):
        add("user_turns", "\n".join(turns))
        if len(turns) > 1:
            for i, turn in enumerate(turns):
                add(f"turn:{i}", cut(turn))
    if config.segments:
        parts = [cut(s) for turn in turns for s in segments(turn, config.min_segment_letters)]
        if len(parts) > 1:
            for i, part in enumerate(_grouped(parts, config.max_segments)):
                add(f"segment:{i}", part)
        else:  # one sentence is read alone only without a lead-in ("Oh, and how do I ...?"), as long as a segment
            for turn in turns:
                rest = cut(turn)
                if rest.lower() != turn.strip().lower() and len(_LETTER.findall(rest)) >= config.min_segment_letters:
                    add("segment:0", rest)
    if config.premises and turns:  # the request is in the last user turn; earlier ones set the scene
        last = turns[-1]
        texts = [last, *(cut(s) for s in segments(last, config.min_segment_letters))]
        rests = [
            r
            for t in texts
            if (r := without_premise(t)) != t.strip() and len(_LETTER.findall(r)) >= config.min_segment_letters
        ]
        for i, rest in enumerate(rests):
            add(f"premise:{i}", rest)
    if config.decode:
        for i, decoded in enumerate(d for turn in turns for d in detect(turn)):
            add(f"decoded:{decoded.kind}" + (f":{i}" if f"decoded:{decoded.kind}" in out else ""), decoded.text)
    return out


def _has_other_turns(conversation: Conversation) -> bool:
    """Whether the conversation has more than its one user turn (assistant or tool turns, or several user turns)."""
    if isinstance(conversation, str):
        return False
    roles = [m.get("role") for m in conversation if m.get("role") not in SYSTEM_ROLES]
    return len(roles) > 1


def framing_signs(conversation: Conversation) -> list[str]:
    """Signs that a conversation imitates turns or steers the reply: domain reasons ('markup', 'prefill',
    'refusal_suppression', 'encoding:KIND'). System prompts are the application's and are not read here."""
    messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
    texts = [m["content"] for m in messages if m.get("role") not in SYSTEM_ROLES and isinstance(m.get("content"), str)]
    signs = []
    if any(_MARKUP.search(t) for t in texts):
        signs.append("markup")
    if (messages and messages[-1].get("role") == "assistant") or any(_PREFILL.search(t) for t in texts):
        signs.append("prefill")
    if any(_NO_REFUSAL.search(t) for t in texts):
        signs.append("refusal_suppression")
    for kind in dict.fromkeys(d.kind for t in user_turns(conversation) for d in detect(t)):
        signs.append(f"encoding:{kind}")
    return signs


__all__ = [
    "ReadingConfig",
    "framing_signs",
    "readings",
    "segments",
    "user_text",
    "user_turns",
    "without_lead_in",
    "without_premise",
    "without_system_prompt",
]

"""A small roff renderer: manual-page source (``man`` and ``mdoc`` macros, ``tbl`` tables) to plain text.

It is not ``groff``: it keeps the words and the paragraph structure of a page and drops the layout. Requests
and macro definitions are skipped, font and size changes are removed, the common named characters become ASCII,
filled text is joined into one line per paragraph, no-fill blocks (``.nf``, ``.EX``, ``.Bd -literal``) keep their
lines, table cells are separated by two spaces. Section headings (``.SH``, ``.Sh``) come back as
:class:`Section` boundaries so that a caller can drop whole sections.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

# named characters \(xx and \[xx] that carry meaning in plain text; any other one is dropped
_NAMED = {
    "em": "--", "en": "-", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'",
    "bu": "*", "co": "(C)", "rg": "(R)", "tm": "(TM)", "mu": "x", "di": "/", "<=": "<=", ">=": ">=", "!=": "!=",
    "->": "->", "<-": "<-", "==": "==", "pl": "+", "eq": "=", "ti": "~", "ha": "^", "ga": "`", "aa": "'",
    "rs": "\\", "sl": "/", "ba": "|", "or": "|", "sq": "#", "lh": "", "rh": "", "de": " degrees", "+-": "+-",
    "Fo": "<<", "Fc": ">>", "fo": "<", "fc": ">", "at": "@", "sh": "#", "Do": "$", "ct": "c", "ss": "ss",
    "12": "1/2", "14": "1/4", "34": "3/4", "ua": "^", "da": "v", "lB": "[", "rB": "]", "lC": "{", "rC": "}",
    "la": "<", "ra": ">", "dg": "+", "ho": "", "ul": "_", "ru": "_", "bv": "|", "br": "|",
}
# single-character escapes \x; unlisted ones stand for the character itself
_SINGLE = {"-": "-", "e": "\\", "&": "", "|": "", "^": "", "0": " ", " ": " ", "~": " ", "c": "", "%": "",
           ":": "", "d": "", "u": "", "t": "\t", "a": "", "p": "", "r": "", "z": "", "{": "", "}": "", "/": "",
           ",": "", "!": "", "E": "\\"}
_ESCAPE = re.compile(
    r"\\(?:"
    r"\((?P<named2>..)|\[(?P<named>[^\]]*)\]"  # \(xx, \[name]
    r"|\*(?:\(..|\[[^\]]*\]|.)"  # \*x strings (defined by the page's preamble): dropped
    r"|f(?:\(..|\[[^\]]*\]|.)"  # font changes
    r"|s[+-]?(?:\(\d\d|\[\d+\]|'\d+'|\d)"  # size changes
    r"|n[+-]?(?:\(..|\[[^\]]*\]|.)"  # number registers
    r"|[hvwoNlLDbxXZSRBAC]'[^']*'"  # motions, width, overstrike, ...
    r"|[kgmM](?:\(..|\[[^\]]*\]|.)|\$\d"
    r"|(?P<single>.))")
_COMMENT = re.compile(r'\\"|\\#')


def unescape(text: str) -> str:
    """``text`` with roff escapes replaced by plain characters (comments ``\\"`` cut off first)."""
    m = _COMMENT.search(text)
    if m:
        text = text[: m.start()]

    def sub(match: re.Match) -> str:
        if match.group("named2") is not None:
            return _NAMED.get(match.group("named2"), "")
        if match.group("named") is not None:
            name = match.group("named")
            if name.startswith("u") and len(name) >= 5:  # \[u00E9]: a Unicode code point
                try:
                    return chr(int(name[1:].split("_")[0], 16))
                except ValueError:
                    return ""
            return _NAMED.get(name, "")
        single = match.group("single")
        if single is not None:
            return _SINGLE.get(single, single)
        return ""

    return _ESCAPE.sub(sub, text)


@dataclass
class Section:
    """One section of a rendered page: its heading (``None`` before the first one) and its paragraphs."""

    heading: str | None
    paragraphs: list[str] = field(default_factory=list)

    def text(self) -> str:
        body = "\n\n".join(p for p in self.paragraphs if p.strip())
        return body if self.heading is None else f"{self.heading}\n{body}" if body else self.heading


# man-macro fonts: alternate the two fonts without spaces between the arguments
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
_JOINED = {"B", "I", "SM", "SB", "CW", "Li", "Sy", "Em", "Pa", "Dv", "Er", "Ev", "Va", "Ic", "Cm", "Ad", "Ms",
           "Tn", "Ux", "Lb", "St", "At", "Bx", "Nx", "Fx", "Ox", "Bsx", "Dx", "An", "Ql", "Vt", "Ft", "Fa", "Ar",
           "Nd", "D1", "Dl", "%A", "%B", "%T", "%J", "%D", "%N", "%O", "%P", "%R", "%V", "%I", "%Q", "%U", "Lk",
           "Mt"}
# man/mdoc requests that start a paragraph
_PARAGRAPH = {"PP", "P", "LP", "HP", "TP", "TQ", "IP", "Pp", "Lp", "It", "sp", "Ss", "Bl", "El", "Bd", "Ed", "Rs",
              "Re", "SY", "YS"}
# mdoc macros that may be called inside another macro's arguments
_MDOC_CALLABLE = {"Ad", "An", "Ar", "Cm", "Dv", "Er", "Ev", "Fa", "Fl", "Fn", "Ft", "Ic", "Li", "Nm", "Pa", "Va",
                  "Vt", "Xr", "Em", "Sy", "Ql", "Ms", "Tn", "Op", "Oo", "Oc", "Pq", "Po", "Pc", "Bq", "Bo", "Bc",
                  "Brq", "Bro", "Brc", "Dq", "Do", "Dc", "Sq", "So", "Sc", "Qq", "Qo", "Qc", "Aq", "Ao", "Ac",
                  "Eq", "Eo", "Ec", "Ns", "Pf", "Sx", "No", "Ux", "Bx", "Nx", "Fx", "Ox", "Bsx", "Dx", "At", "St",
                  "Lb", "Lk", "Mt", "In", "Fo", "Fc", "Xo", "Xc", "Ta"}
_OPEN = {"Op": "[", "Oo": "[", "Pq": "(", "Po": "(", "Bq": "[", "Bo": "[", "Brq": "{", "Bro": "{", "Dq": '"',
         "Do": '"', "Sq": "'", "So": "'", "Qq": '"', "Qo": '"', "Aq": "<", "Ao": "<"}
_CLOSE = {"Oc": "]", "Pc": ")", "Bc": "]", "Brc": "}", "Dc": '"', "Sc": "'", "Qc": '"', "Ac": ">"}
_WRAPPED_CLOSE = {"Op": "]", "Pq": ")", "Bq": "]", "Brq": "}", "Dq": '"', "Sq": "'", "Qq": '"', "Aq": ">"}


def _split_args(text: str) -> list[str]:
    """Macro arguments: blank-separated, double quotes group, ``""`` inside quotes is a quote."""
    try:
        lex = shlex.shlex(text.replace('""', "\x00"), posix=True)
        lex.whitespace_split, lex.quotes, lex.escape, lex.commenters = True, '"', "", ""
        return [a.replace("\x00", '"') for a in lex]
    except ValueError:  # an unbalanced quote: take the words as they are
        return text.replace('"', " ").split()


def _mdoc_args(args: list[str], state: dict) -> str:
    """Render mdoc arguments with the macros called inside them (``Fl``, ``Xr``, ``Op``, ``Fn``, ...)."""
    out: list[str] = []
    closers: list[str] = []
    no_space = False
    i = 0

    def put(word: str) -> None:
        nonlocal no_space
        if no_space and out:
            out[-1] += word
        else:
            out.append(word)
        no_space = False

    while i < len(args):
        a = args[i]
        i += 1
        if a in _MDOC_CALLABLE:
            if a == "Fl":
                nxt = args[i] if i < len(args) and args[i] not in _MDOC_CALLABLE else ""
                i += bool(nxt)
                put("-" + nxt)
            elif a == "Xr":  # a cross reference: the name, never its section
                if i < len(args):
                    put(args[i])
                    i += 1
                if i < len(args) and re.fullmatch(r"[1-9n][a-zA-Z0-9]*", args[i]):
                    i += 1
            elif a == "Nm":
                if i < len(args) and args[i] not in _MDOC_CALLABLE:
                    state.setdefault("name", args[i])
                    put(args[i])
                    i += 1
                elif state.get("name"):
                    put(state["name"])
            elif a == "Fn":
                rest = []
                while i < len(args) and args[i] not in _MDOC_CALLABLE and not re.fullmatch(r"[.,:;)\]?!]", args[i]):
                    rest.append(args[i])
                    i += 1
                if rest:
                    put(f"{rest[0]}({', '.join(rest[1:])})")
            elif a == "In":
                if i < len(args):
                    put(f"#include <{args[i]}>")
                    i += 1
            elif a in _OPEN:
                put(_OPEN[a])
                no_space = True
                if a in _WRAPPED_CLOSE:
                    closers.append(_WRAPPED_CLOSE[a])
            elif a in _CLOSE:
                no_space = True
                put(_CLOSE[a])
            elif a in ("Ns", "Pf"):
                no_space = True
                if a == "Pf" and i < len(args):
                    put(args[i])
                    i += 1
                    no_space = True
            elif a == "Ar" and (i >= len(args) or args[i] in _MDOC_CALLABLE):
                put("file ...")
            elif a in ("Bx", "Nx", "Fx", "Ox", "Bsx", "Dx"):
                put({"Bx": "BSD", "Nx": "NetBSD", "Fx": "FreeBSD", "Ox": "OpenBSD", "Bsx": "BSD/OS",
                     "Dx": "DragonFly"}[a])
        elif re.fullmatch(r"[.,:;)\]?!]", a) and out:
            out[-1] += a
        else:
            put(a)
    text = " ".join(out)
    for c in reversed(closers):
        text += c
    return text


def render_sections(source: str) -> list[Section]:
    """Render a manual page's roff source into its sections (see the module docstring for what is kept).

    Args:
        source: the page's text (``man`` or ``mdoc`` macros).

    Returns:
        The sections in page order; the first has heading ``None`` and holds any text before the first
        heading (usually none).
    """
    sections = [Section(None)]
    para: list[str] = []  # filled lines of the paragraph being built
    fill, skip_until, tbl = True, None, None  # tbl: None, "options", "format" or "data"
    heading_next = False
    tab = "\t"  # the table's cell separator (tbl's tab(x) option)
    state: dict = {}

    def flush() -> None:
        if para:
            text = re.sub(r"[ \t]+", " ", " ".join(para)).strip() if fill else "\n".join(para)
            if text.strip():
                sections[-1].paragraphs.append(text)
            para.clear()

    def emit(text: str) -> None:
        nonlocal heading_next
        if heading_next:
            heading_next = False
            flush()
            sections.append(Section(text.strip().upper()))
            return
        para.append(text)

    for raw in source.replace("\r\n", "\n").split("\n"):
        if skip_until is not None:
            if re.sub(r"\s+", "", raw) == skip_until:  # ".." may be written ".  ." inside a block
                skip_until = None
            continue
        if raw[:1] in (".", "'"):
            body = raw[1:].lstrip()
            if body.startswith(('\\"', "\\#")) or not body:
                continue
            name, _, rest = body.partition(" ")
            name = name.rstrip("\t")
            if name in ("de", "de1", "am", "ig", "dei"):
                skip_until = ".."
                continue
            if name in ("TS",):
                flush()
                tbl, tab = "format", "\t"
                continue
            if name == "TE":
                flush()
                tbl = None
                continue
            if name == "T&":
                tbl = "format"
                continue
            if name in ("EQ",):
                skip_until = ".EN"
                continue
            args = _split_args(unescape(rest))
            if name in ("SH", "Sh", "SS", "Ss"):
                if name in ("SS", "Ss"):
                    flush()
                    if args:
                        para.append(" ".join(args))
                        flush()
                    continue
                flush()
                if args:
                    sections.append(Section(" ".join(args).strip().upper()))
                else:
                    heading_next = True
                continue
            if name in ("nf", "EX", "Bd", "Vb"):
                flush()
                fill = not (name in ("nf", "EX", "Vb") or "-literal" in args or "-unfilled" in args)
                continue
            if name in ("fi", "EE", "Ed", "Ve"):
                flush()
                fill = True
                continue
            if name in ("br",):
                if fill:
                    flush()
                continue
            if name in _PARAGRAPH:
                flush()
                if name == "IP" and args and args[0] not in ("\\(bu", "*", "-"):
                    para.append(args[0])
                elif name == "It" and args:
                    para.append(_mdoc_args(args, state))
                    flush()
                continue
            if name in _ALTERNATING:
                emit("".join(args))
            elif name in _JOINED:
                emit(_mdoc_args(args, state) if name[0].isupper() and len(name) == 2 and name not in ("SM", "SB")
                     else " ".join(args))
            elif name in _MDOC_CALLABLE or name == "Xr":
                emit(_mdoc_args([name, *args], state))
            elif name == "OP":
                emit("[" + " ".join(args) + "]")
            elif name in ("UR", "MT", "UE", "ME"):
                if name in ("UE", "ME") and args:
                    emit("".join(args))
            # every other request (.TH, .Dt, .if, .ds, .nr, .in, .RS, ...) carries no words of the page
            continue
        if tbl == "format":
            if raw.rstrip().endswith(";"):  # the options line
                m = re.search(r"tab\s*\((.)\)", raw)
                tab = m.group(1) if m else "\t"
            elif raw.rstrip().endswith("."):
                tbl = "data"
            continue
        line = unescape(raw)
        if tbl == "data":
            line = line.replace("T{", "").replace("T}", "")
            if line.strip() in ("_", "=", ""):
                continue
            line = re.sub(r"[ \t]*" + re.escape(tab) + r"+[ \t]*", "  ", line)
            if fill:  # one paragraph per row, cells kept apart
                flush()
                sections[-1].paragraphs.append(line.strip())
                continue
        emit(line if not fill else line.strip())
    flush()
    return sections


def render(source: str) -> str:
    """The whole page as plain text: every section, its heading on a line of its own, blank lines between
    paragraphs."""
    return "\n\n".join(s.text() for s in render_sections(source) if s.heading is not None or s.paragraphs)

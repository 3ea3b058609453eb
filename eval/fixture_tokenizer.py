"""Synthetic byte-level tokenizers with a real model's size and special-token ids.

The vocabulary is built by rule, not trained, so it is deterministic and quick: the 128 ASCII
byte symbols, one unknown symbol, common English words and those of the judge's prompts (so
prompts tokenize to about the number of tokens the real tokenizers give them), then printable pairs and triples until the real number of ordinary tokens is reached. Only ASCII byte symbols are in the base, so every
id decodes to a distinct non-empty string (a lone non-ASCII byte would decode to U+FFFD, which
is what the unknown symbol stands for: non-ASCII input is encoded as that one token).
"""
import json
from dataclasses import dataclass, field

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

UNK = "\ufffd"
# The unknown symbol follows the 128 ASCII byte symbols.
UNK_ID = 128

# Words that get one token each, with and without a leading space, lower and capitalised.
WORDS = """
the of and to in is you that it he was for on are as with his they at be this have from or one
had by word but not what all were we when your can said there use an each which she do how their
if will up other about out many then them these so some her would make like him into time has
look two more write go see number no way could people my than first water been call who oil its
now find long down day did get come made may part over new after also only good very well just
where most know take year years work world life back give name great help through much before
line right too mean old any same tell boy follow came want show around form three small set put
end does another large must big even such because turn here why ask went men read need land
different home us move try kind hand picture again change off play spell air away animal house
point page letter mother answer found study still learn should world high every near add food
between own below country plant last school father keep tree never start city earth eye light
thought head under story saw left few while along might close something seem next hard open
example begin begins beginning those both paper together got group often run important until
children side feet car mile night walk white sea began grow took river four carry state once book
hear stop without second later miss idea enough eat face watch far really almost let above girl
sometimes mountain cut young talk soon list song being leave family it's hello hi thanks thank
am fine today doing assistant helpful user system question image describe generate about cat man
novelist mystery novel novels writer author wrote written university trained detective crime
news report reports city council said says announced plan plans project public market economy
summarize summary following text article paragraph paragraphs company companies government
local residents officials percent million week month weather rain storm season first second
a able apply approve argued assist autumn bank barrier budget central construction content cost cover
debate dollars east embankment ending estimated expected finish flood flooded funds half harbour hillary
hold homes hundred including language market's meetings metres mill monthly natural opponents overdue
owners progress provides pumping questioned raise realistic riverside riverton sentences several shaped
shop spring square stations stories storms street studied style supporters tasks temporary training
tuesday understand using variety vision visual voted whether within writing yale
""".split()

PRINTABLE_BYTES = list(range(33, 127)) + [ord(" "), ord("\n")]


def byte_symbols():
    """The byte-to-symbol table of byte-level BPE: printable bytes stand for themselves, the
    rest are shifted to unused code points from 256 upwards, in byte order."""
    kept = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, shift = {}, 0
    for byte in range(256):
        if byte in kept:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shift)
            shift += 1
    return table


@dataclass(frozen=True)
class TokenizerSpec:
    """What a family's tokenizer must look like: ordinary tokens take ids [0, n_regular), named
    special tokens sit at their real ids, every other id up to `size` is a reserved special."""
    n_regular: int
    specials: dict
    size: int
    bos: str = None
    extra_config: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.n_regular < 1000:
            raise ValueError(f"n_regular must be at least 1000, got {self.n_regular}")
        bad = [i for i in self.specials if not self.n_regular <= i < self.size]
        if bad:
            raise ValueError(f"special ids {bad} fall outside [{self.n_regular}, {self.size})")
        if self.bos is not None and self.bos not in self.specials.values():
            raise ValueError(f"bos token {self.bos!r} is not one of the specials")

    def special_table(self):
        """id -> content for every id in [n_regular, size)."""
        return {i: self.specials.get(i, f"<|reserved_{i}|>") for i in range(self.n_regular, self.size)}


def regular_vocab(n_regular):
    """Ordinary tokens in id order."""
    symbol = byte_symbols()
    tokens = [symbol[b] for b in range(128)] + [UNK]
    known = set(tokens)

    def add(token):
        if len(tokens) < n_regular and token not in known:
            tokens.append(token)
            known.add(token)

    for word in WORDS:
        for form in (word, word.capitalize()):
            for text in (form, " " + form):
                add("".join(symbol[b] for b in text.encode("ascii")))

    printable = [symbol[b] for b in PRINTABLE_BYTES]
    level_start = len(tokens)
    for left in printable:
        for right in printable:
            add(left + right)
    cursor = level_start
    while len(tokens) < n_regular:
        for right in printable:
            add(tokens[cursor] + right)
        cursor += 1
    return tokens


def build_tokenizer(spec):
    """The `tokenizers` object for a spec.

    The model is greedy longest-match (WordPiece without a continuation prefix) over byte-level
    words: a listed word is one token, anything else splits into the longest known pieces. A BPE
    built by rule would need merge ranks consistent across words, which a rule cannot give.
    """
    vocab = {token: i for i, token in enumerate(regular_vocab(spec.n_regular))}
    table = spec.special_table()
    for i, content in table.items():
        vocab[content] = i
    model = models.WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix="", max_input_chars_per_word=1000)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    if spec.bos is not None:
        bos_id = vocab[spec.bos]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, bos_id)]
        )
    tokenizer.add_special_tokens([AddedToken(table[i], special=True, normalized=False) for i in sorted(table)])
    return tokenizer


def tokenizer_files(spec, tokenizer_class, chat_template, special_roles):
    """File name -> text for a tokenizer directory.

    special_roles maps the config's role names (eos_token, pad_token, ...) to token contents.
    """
    tokenizer = build_tokenizer(spec)
    config = {
        "tokenizer_class": tokenizer_class,
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        "unk_token": None,
        "bos_token": spec.bos,
        "add_bos_token": spec.bos is not None,
        "add_eos_token": False,
        "chat_template": chat_template,
        "model_max_length": 32768,
        **special_roles,
        **spec.extra_config,
    }
    return {
        "tokenizer.json": tokenizer.to_str(),
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True),
    }

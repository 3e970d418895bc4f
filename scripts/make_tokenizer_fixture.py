"""Write fixtures/tokenizer/cases.json: reference CLIP token ids for 300+ varied strings.

Reference: transformers' SLOW `CLIPTokenizer` (pure-Python BPE; with `ftfy` installed it runs
`ftfy.fix_text`, collapses whitespace and lower-cases, like OpenAI's simple_tokenizer), loaded
from the vocab.json/merges.txt that scripts/clip_vocab.py builds from CLIP's merge list.
transformers 5 removed the slow tokenizer (its `CLIPTokenizer` is the `tokenizers`-backed one);
there the ids come from the OpenAI re-implementation below. The committed file was made with
transformers 4.x, where both are computed and asserted identical. Each
case is `tok(text, truncation=True, max_length=77)["input_ids"]`: <|startoftext|> ... <|endoftext|>,
at most 77 ids (truncation keeps the EOT), no padding.

As an independent cross-check the script also re-implements OpenAI's simple_tokenizer (the
original algorithm from github.com/openai/CLIP) and asserts it gives the same ids for every case.
The Rust-based fast tokenizer (CLIPTokenizerFast) is compared too, but only reported.

Output format: exactly a JSON list of {"text": str, "ids": [int, ...]}.

Strings are chosen so that ftfy leaves them unchanged (asserted): NO HTML entities (&amp;),
curly quotes, ligatures (ﬁ), fullwidth characters, mojibake, decomposed accents (ftfy applies
NFC), carriage returns or control characters, and no literal "<|endoftext|>" text -- ftfy (and
OpenAI's html.unescape, which transformers' slow tokenizer does not do) would rewrite those, so
reproducing them would require a full ftfy port.

Note: the tokenizers-backed CLIPTokenizer / tokenizer.json lower-cases per character, so it
differs on "ΟΔΟΣ" (Python's str.lower, used by OpenAI and the slow tokenizer, gives final sigma ς).

Usage (from the repo root):  python3 scripts/make_tokenizer_fixture.py
Needs: transformers (best < 5), ftfy, regex.  Deterministic (no randomness).
"""

import functools
import gzip
import html
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import clip_vocab  # noqa: E402

ROOT = os.path.dirname(HERE)
OUT_PATH = os.path.join(ROOT, "fixtures", "tokenizer", "cases.json")

CLASS_NAMES = [
    # ImageNet-like, some with underscores (turned into spaces, as CoOp does)
    "tench", "goldfish", "great_white_shark", "tiger_shark", "hammerhead", "electric_ray",
    "stingray", "cock", "hen", "ostrich", "brambling", "goldfinch", "house_finch", "junco",
    "indigo_bunting", "robin", "bulbul", "jay", "magpie", "chickadee", "water_ouzel", "kite",
    "bald_eagle", "vulture", "great_grey_owl", "European_fire_salamander", "common_newt",
    "eft", "spotted_salamander", "axolotl", "bullfrog", "tree_frog", "tailed_frog",
    "loggerhead", "leatherback_turtle", "mud_turtle", "terrapin", "box_turtle",
    "banded_gecko", "common_iguana", "American_chameleon", "whiptail", "agama",
    "frilled_lizard", "alligator_lizard", "Gila_monster", "green_lizard", "African_chameleon",
    "Komodo_dragon", "African_crocodile", "American_alligator", "triceratops",
    "German_shepherd", "golden_retriever", "Labrador_retriever", "Chihuahua", "Shih-Tzu",
    "Rhodesian_ridgeback", "Afghan_hound", "basset", "beagle", "bloodhound", "Saint_Bernard",
    "Siamese_cat", "Persian_cat", "tabby", "Egyptian_cat", "cougar", "lynx", "snow_leopard",
    "jaguar", "lion", "tiger", "cheetah", "brown_bear", "American_black_bear", "ice_bear",
    "sloth_bear", "mongoose", "meerkat", "tiger_beetle", "ladybug", "ground_beetle",
    "long-horned_beetle", "leaf_beetle", "dung_beetle", "rhinoceros_beetle", "weevil", "fly",
    "bee", "ant", "grasshopper", "cricket", "walking_stick", "cockroach", "mantis", "cicada",
    "leafhopper", "lacewing", "dragonfly", "damselfly", "admiral", "ringlet",
    "monarch", "cabbage_butterfly", "sulphur_butterfly", "lycaenid", "starfish", "sea_urchin",
    "sea_cucumber", "wood_rabbit", "hare", "Angora", "hamster", "porcupine", "fox_squirrel",
    "marmot", "beaver", "guinea_pig", "sorrel", "zebra", "hog", "wild_boar", "warthog",
    "hippopotamus", "ox", "water_buffalo", "bison", "ram", "bighorn", "ibex", "hartebeest",
    "impala", "gazelle", "Arabian_camel", "llama", "weasel", "mink", "polecat",
    "black-footed_ferret", "otter", "skunk", "badger", "armadillo", "three-toed_sloth",
    "orangutan", "gorilla", "chimpanzee", "gibbon", "siamang", "guenon", "patas", "baboon",
    "macaque", "langur", "colobus", "proboscis_monkey", "marmoset", "capuchin",
    "howler_monkey", "titi", "spider_monkey", "squirrel_monkey", "Madagascar_cat",
    "indri", "Indian_elephant", "African_elephant", "lesser_panda", "giant_panda",
    "barracouta", "eel", "coho", "rock_beauty", "anemone_fish", "sturgeon", "gar",
    "lionfish", "puffer", "abacus", "abaya", "academic_gown", "accordion", "acoustic_guitar",
    "aircraft_carrier", "airliner", "airship", "altar", "ambulance", "amphibian",
    "analog_clock", "apiary", "apron", "ashcan", "assault_rifle", "backpack", "bakery",
    "balance_beam", "balloon", "ballpoint", "Band_Aid", "banjo", "bannister", "barbell",
    "barber_chair", "barbershop", "barn", "barometer", "barrel", "barrow", "baseball",
    "basketball", "bassinet", "bassoon", "bathing_cap", "bath_towel", "bathtub",
    "beach_wagon", "beacon", "beaker", "bearskin", "beer_bottle", "beer_glass", "bell_cote",
    "bib", "bicycle-built-for-two", "bikini", "binder", "binoculars", "birdhouse",
    "boathouse", "bobsled", "bolo_tie", "bonnet", "bookcase", "bookshop", "bottlecap", "bow",
    "bow_tie", "brass", "brassiere", "breakwater", "breastplate", "broom", "bucket", "buckle",
    "bulletproof_vest", "bullet_train", "butcher_shop", "cab", "caldron", "candle", "cannon",
    "canoe", "can_opener", "cardigan", "car_mirror", "carousel", "carpenter's_kit",
    "carton", "car_wheel", "cash_machine", "cassette", "cassette_player", "castle",
    "catamaran", "CD_player", "cello", "cellular_telephone", "chain", "chainlink_fence",
    "chain_mail", "chain_saw", "chest", "chiffonier", "chime", "china_cabinet",
    "Christmas_stocking", "church", "cinema", "cleaver", "cliff_dwelling", "cloak", "clog",
    "cocktail_shaker", "coffee_mug", "coffeepot", "coil", "combination_lock",
    "computer_keyboard", "confectionery", "container_ship", "convertible", "corkscrew",
    "cornet", "cowboy_boot", "cowboy_hat", "cradle", "crane", "crash_helmet", "crate",
    "crib", "Crock_Pot", "croquet_ball", "crutch", "cuirass", "dam", "desk",
    "desktop_computer", "dial_telephone", "diaper", "digital_clock", "digital_watch",
    "dining_table", "dishrag", "dishwasher", "disk_brake", "dock", "dogsled", "dome",
    "doormat", "drilling_platform", "drum", "drumstick", "dumbbell", "Dutch_oven",
    "electric_fan", "electric_guitar", "electric_locomotive", "entertainment_center",
    "envelope", "espresso_maker", "face_powder", "feather_boa", "file", "fireboat",
    "fire_engine", "fire_screen", "flagpole", "flute", "folding_chair", "football_helmet",
    "forklift", "fountain", "fountain_pen", "four-poster", "freight_car", "French_horn",
    "frying_pan", "fur_coat", "garbage_truck", "gasmask", "gas_pump", "goblet", "go-kart",
    "golf_ball", "golfcart", "gondola", "gong", "gown", "grand_piano", "greenhouse",
    "grille", "grocery_store", "guillotine", "hair_slide", "hair_spray", "half_track",
    "hammer", "hamper", "hand_blower", "hand-held_computer", "handkerchief", "hard_disc",
    "harmonica", "harp", "harvester", "hatchet", "holster", "home_theater", "honeycomb",
    "hook", "hoopskirt", "horizontal_bar", "horse_cart", "hourglass", "iPod", "iron",
    "jack-o'-lantern", "jean", "jeep", "jersey", "jigsaw_puzzle", "jinrikisha", "joystick",
    "kimono", "knee_pad", "knot", "lab_coat", "ladle", "lampshade", "laptop", "lawn_mower",
    "lens_cap", "letter_opener", "library", "lifeboat", "lighter", "limousine", "liner",
    "lipstick", "Loafer", "lotion", "loudspeaker", "loupe", "lumbermill", "magnetic_compass",
]

TEMPLATES = [
    "a photo of a {}.",
    "a bad photo of a {}.",
    "itap of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a centered satellite photo of {}.",
    "a photo of {}, a type of pet.",
    "a photo of a {}, a type of flower.",
    "a photo of a {}, a type of aircraft.",
    "a photo of {}, a type of food.",
    "{} texture.",
    "a photo of a person doing {}.",
    "X X X X {}.",  # CoOp-style placeholder prompt
]

MISC = [
    "",
    " ",
    "a photo of a dog.",
    "a photo of a cat.",
    "an origami crane, folded from paper",
    "x",
    "a",
    "A",
    "I",
    "hello world",
    "Hello, World!",
    "HELLO WORLD",
    "The Quick Brown Fox Jumps Over The Lazy Dog",
    "tHe QuIcK bRoWn FoX",
    "CamelCaseIdentifierName",
    "snake_case_identifier_name",
    "kebab-case-identifier-name",
    "CONSTANT_VALUE_42",
    # punctuation-heavy
    "Wait... what?!",
    "!!!",
    "???",
    "?!?!?!",
    "...",
    "--",
    "a--b",
    "(parenthesised) [bracketed] {braced} <angled>",
    "email: someone@example.com",
    "https://www.example.com/path/to/page?query=1&x=y#frag",
    "C:\\Users\\name\\file.txt",
    "#hashtag @mention $dollar %percent ^caret *star",
    "a+b=c; d-e=f: g*h/i",
    "\"double quoted\" and 'single quoted'",
    "'",
    "''",
    "\"",
    "~`|\\^_",
    "semi;colon,comma.period:colon",
    "a/b/c",
    "x_y_z",
    "__init__",
    "a.b.c.d",
    "end with a period.",
    "ellipsis at end...",
    "#1 best seller!!!",
    ":-) ;-) :D xD <3",
    "> quoted line",
    "- bullet item",
    "* star item",
    "1) first 2) second",
    # digits and numbers
    "0",
    "7",
    "42",
    "123456789",
    "3.14",
    "3.14159265358979",
    "-273.15",
    "1,000,000",
    "1e-5",
    "0x1F",
    "covid-19",
    "COVID-19",
    "2023-01-15",
    "12:34:56",
    "10%",
    "$9.99",
    "100km/h",
    "4K UHD 2160p",
    "iPhone 15 Pro Max",
    "R2-D2 and C-3PO",
    "ResNet-50 vs ViT-B/32",
    "a photo of 3 dogs and 12 cats.",
    "route 66",
    "version 2.0.1",
    "1st 2nd 3rd 4th",
    "phone: 555-0123",
    # contractions
    "don't",
    "it's",
    "we'll",
    "they'd",
    "I'm",
    "you're",
    "we've",
    "can't",
    "won't",
    "shouldn't've",
    "DON'T",
    "IT'S",
    "WE'LL",
    "They'D",
    "I'M HERE",
    "the dog's bone",
    "the dogs' bones",
    "rock 'n' roll",
    "'tis the season",
    "o'clock",
    "y'all're",
    "it's a dog's life, isn't it?",
    # accents and diacritics (precomposed, NFC)
    "café",
    "naïve",
    "Zürich",
    "São Paulo",
    "crème brûlée",
    "jalapeño",
    "façade",
    "résumé",
    "Ångström",
    "Øresund",
    "Kraków",
    "Dvořák",
    "Straße",
    "piñata",
    "Ελλάδα",
    "ÉCOLE",
    "CAFÉ AU LAIT",
    "über",
    "ÜBER",
    "señor",
    "Mañana",
    "İstanbul",
    "Reykjavík",
    "Hà Nội",
    "Łódź",
    # mixed whitespace
    "\ta photo\tof a dog",
    "a photo\nof a dog",
    "a\n\nphoto",
    "a   photo    of     a dog",
    "  leading spaces",
    "trailing spaces   ",
    "   both   ",
    "\n\nnewlines around\n\n",
    "\t\t",
    "\n",
    "mixed \t\n whitespace \t\n everywhere",
    "non\u00a0breaking\u00a0space",
    # non-Latin scripts and emoji
    "Καλημέρα κόσμε",
    "ΟΔΟΣ",
    "Привет, мир!",
    "МОСКВА",
    "Съешь же ещё этих мягких французских булок",
    "你好世界。",
    "一只狗的照片",
    "猫",
    "こんにちは世界",
    "カタカナ",
    "日本語のテキスト",
    "안녕하세요",
    "مرحبا بالعالم",
    "שלום עולם",
    "नमस्ते दुनिया",
    "สวัสดีชาวโลก",
    "😀",
    "a photo of a 🐶.",
    "🐱🐶🐭🐹",
    "I ❤ NY",
    "thumbs up 👍🏽",
    "family 👨‍👩‍👧",
    "flag 🇫🇷",
    "★☆★",
    "→ ← ↑ ↓",
    "∑ ∫ √ ∞ ≠ ≤",
    "€100 £50 ¥1000",
    "©2024 ®™",
    "°C and °F",
    "½ cup",
    "α-helix and β-sheet",
    "x² + y² = z²",
    "mixed English и русский 中文",
]

LONG = [
    " ".join(["dog"] * 100),
    " ".join(f"word{i}" for i in range(60)),
    "a photo of a " + "very " * 80 + "big dog.",
    ("The quick brown fox jumps over the lazy dog. " * 8).strip(),
    "supercalifragilisticexpialidocious " * 20,
    "0123456789" * 20,
    "!?" * 100,
    "猫" * 50,
    "😀" * 40,
    # exactly around the boundary: 75 content tokens, 76, 74
    " ".join(["dog"] * 74),
    " ".join(["dog"] * 75),
    " ".join(["dog"] * 76),
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure "
    "dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur.",
]


def build_texts():
    texts = []
    names = [c.replace("_", " ") for c in CLASS_NAMES]
    texts += [TEMPLATES[0].format(n) for n in names]  # "a photo of a {}." for every class
    for i, t in enumerate(TEMPLATES[1:]):
        for n in names[i * 7 : i * 7 + 4]:
            texts.append(t.format(n))
    texts += names[::5]  # bare class names
    texts += CLASS_NAMES[::9]  # raw names with underscores kept
    texts += MISC
    texts += LONG
    seen, out = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# Independent re-implementation of OpenAI's simple_tokenizer (github.com/openai/CLIP, MIT).
# ---------------------------------------------------------------------------------------------
class OpenAISimpleTokenizer:
    def __init__(self, bpe_path):
        import regex as re

        self.byte_encoder = clip_vocab.bytes_to_unicode()
        merges = clip_vocab.load_merges(bpe_path)
        vocab = clip_vocab.build_vocab(merges)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = re.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            re.IGNORECASE,
        )

    @staticmethod
    def _pairs(word):
        return set(zip(word[:-1], word[1:]))

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = self._pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                    new_word.extend(word[i:j])
                    i = j
                except ValueError:
                    new_word.extend(word[i:])
                    break
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = self._pairs(word)
        word = " ".join(word)
        self.cache[token] = word
        return word

    def encode(self, text):
        import ftfy
        import regex as re

        text = ftfy.fix_text(text)
        text = html.unescape(html.unescape(text)).strip()
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for token in re.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def tokenize(self, text, context_length=77):
        """OpenAI's clip.tokenize(text, truncate=True), without the zero padding."""
        sot, eot = self.encoder["<|startoftext|>"], self.encoder["<|endoftext|>"]
        tokens = [sot] + self.encode(text) + [eot]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = eot
        return tokens


def slow_hf_tokenizer(tmp):
    """transformers' pure-Python CLIPTokenizer (transformers < 5), or None where it is gone.

    transformers 5 replaced it by a `tokenizers`-backed class of the same name.
    """
    from transformers import CLIPTokenizer

    if not hasattr(CLIPTokenizer, "bpe"):
        return None
    tok = CLIPTokenizer(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"))
    assert getattr(tok, "fix_text", None) is not None, "slow CLIPTokenizer is not using ftfy"
    return tok


def fast_hf_tokenizer(tmp):
    from transformers import CLIPTokenizerFast

    # from_pretrained works in transformers 4 and 5 (5 ignores vocab_file=/merges_file= kwargs)
    return CLIPTokenizerFast.from_pretrained(tmp)


def main():
    import ftfy
    import transformers

    texts = build_texts()
    for t in texts:
        assert ftfy.fix_text(t) == t, f"ftfy would rewrite {t!r} -> {ftfy.fix_text(t)!r}"
        assert "&" not in t or html.unescape(t) == t, f"HTML entity in {t!r}"

    with tempfile.TemporaryDirectory() as tmp:
        clip_vocab.write_vocab_files(tmp)
        slow = slow_hf_tokenizer(tmp)
        fast = fast_hf_tokenizer(tmp)
    openai = OpenAISimpleTokenizer(clip_vocab.bpe_path_default())

    def hf_ids(tok, text):
        return list(tok(text, truncation=True, max_length=77)["input_ids"])

    # Reference: the slow HF tokenizer where transformers still has it, else the OpenAI algorithm;
    # with the slow tokenizer present, the two must agree on every case.
    ref = (lambda t: hf_ids(slow, t)) if slow is not None else openai.tokenize

    expect = [49406, 320, 1125, 539, 320, 1929, 269, 49407]
    got = ref("a photo of a dog.")
    assert got == expect, got

    cases, fast_diff = [], []
    for t in texts:
        ids = ref(t)
        assert ids[0] == 49406 and ids[-1] == 49407 and len(ids) <= 77, (t, ids)
        oa = openai.tokenize(t)
        assert ids == oa, f"slow HF and OpenAI re-implementation disagree on {t!r}:\n{ids}\n{oa}"
        if hf_ids(fast, t) != ids:
            fast_diff.append(t)
        cases.append({"text": t, "ids": ids})

    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w", encoding="utf-8") as f:
        json.dump(cases, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")

    n_trunc = sum(1 for c in cases if len(c["ids"]) == 77)
    print(f"transformers {transformers.__version__}, ftfy {ftfy.__version__}")
    print(f"wrote {os.path.relpath(OUT_PATH, ROOT)}: {len(cases)} cases "
          f"({n_trunc} at the 77-token limit), {os.path.getsize(OUT_PATH)} bytes")
    if slow is not None:
        print("slow CLIPTokenizer (python BPE + ftfy) == OpenAI simple_tokenizer "
              "re-implementation on all cases")
    else:
        print("WARNING: this transformers has no slow python CLIPTokenizer; ids come from the "
              "OpenAI simple_tokenizer re-implementation (run with transformers<5 to cross-check)")
    name = type(fast).__name__
    if fast_diff:
        print(f"note: {name} (tokenizers backend, no ftfy) differs on {len(fast_diff)} case(s):")
        for t in fast_diff:
            print(f"  {t!r}")
    else:
        print(f"{name} (tokenizers backend) agrees on all cases")


if __name__ == "__main__":
    main()

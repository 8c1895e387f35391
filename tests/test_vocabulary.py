from importlib import resources

import pytest

from magicseg_models.errors import MagicSegError, VocabularyError
from magicseg_models.vocabulary import Vocabulary


def vocab_file_names() -> list[str]:
    text = resources.files("magicseg_models").joinpath("data", "vocab_1205.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def error_message(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.default()


def test_default_has_1205_classes_in_file_order(vocab):
    assert len(vocab) == 1205
    assert vocab.ids == list(range(1205))
    assert vocab.names == vocab_file_names()
    assert vocab.full_names() == vocab.names
    assert vocab.source == "builtin:vocab_1205"
    assert Vocabulary.default() is vocab  # cached
    assert vocab[2].name == "airplane"
    assert (vocab[1203].name, vocab[1204].name) == ("pottedplant", "tvmonitor")


def test_lvis_classes_carry_definitions_and_synonyms(vocab):
    lvis = vocab.classes[:1203]
    assert all(c.definition for c in lvis)
    assert vocab[1203].definition is None and vocab[1204].definition is None
    assert vocab.resolve("airplane").synonyms == ("aeroplane",)
    assert all("_" not in s for c in vocab for s in c.synonyms)


def test_qualified_name_gets_short_prompt_and_hint(vocab):
    bus = vocab.resolve("bus (vehicle)")
    assert (bus.id, bus.prompt_name, bus.detector_phrase) == (172, "bus", "bus")
    assert bus.hint == f"bus (vehicle): {bus.definition}"
    assert "public transport" in bus.hint
    assert vocab.resolve("arctic (type of shoe)").prompt_name == "arctic"


def test_unqualified_unique_name_has_no_hint(vocab):
    cat = vocab.resolve("cat")
    assert (cat.prompt_name, cat.hint) == ("cat", None)


def test_shared_prompt_name_gets_hint_even_without_qualifier(vocab):
    fish = vocab.resolve("fish")  # exact canonical name wins over the shared prompt name
    assert fish.name == "fish"
    assert fish.hint.startswith("fish: ") and fish.definition in fish.hint
    assert vocab.resolve("fish (food)").hint.startswith("fish (food): ")


def _reviewed_rows(filename: str) -> list[list[str]]:
    text = resources.files("magicseg_models").joinpath("data", filename).read_text("utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [line.split("\t") for line in lines[1:]]


# bare base words of qualified classes that name something else in a scene (the list and a few more)
AMBIGUOUS_BASE_WORDS = {"arctic", "date", "file", "iron", "cab", "bow", "fish", "pan", "salmon", "octopus", "bat",
                        "cap", "mouse", "orange", "glass", "scale", "speaker", "runner", "pitcher", "poker", "pop",
                        "tank", "tape", "straw", "turkey", "toast", "ram", "drum", "pin", "batter", "crisp"}


def test_detector_phrases_are_unique_over_the_builtin_classes(vocab):
    phrases = [c.detector_phrase for c in vocab]
    assert len(set(phrases)) == len(phrases) == 1205
    assert all(p == p.lower() and p.strip() and "(" not in p for p in phrases)
    assert [vocab.resolve(n).detector_phrase for n in ("bow (weapon)", "bow (decorative ribbons)", "cab (taxi)",
                                                       "iron (for clothing)", "date (fruit)")] == [
        "archery bow", "ribbon bow", "taxi", "clothes iron", "date fruit"]


def test_every_qualified_class_has_a_reviewed_phrase_naming_its_object(vocab):
    rows = _reviewed_rows("vocab_1205_detector_phrases.tsv")
    qualified = {c.name for c in vocab if "(" in c.name}
    assert len(qualified) == 108 and {r[0] for r in rows} == qualified and len(rows) == 108
    for name, phrase, ambiguous, why in rows:
        c = vocab.resolve(name)
        assert c.detector_phrase == phrase and ambiguous in ("yes", "no") and why, name
        base = c.prompt_name.lower()
        if ambiguous == "yes" or base in AMBIGUOUS_BASE_WORDS:
            assert phrase != base, name
    assert {r[0].split(" (")[0] for r in rows if r[2] == "yes"} >= AMBIGUOUS_BASE_WORDS


def test_custom_vocabulary_sets_its_own_phrase_and_may_not_share_one(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("bow (weapon)\tbow\tlongbow\nbat (animal)\nbat (sports)\tbat\tbaseball bat\n", encoding="utf-8")
    vocab = Vocabulary.from_file(str(path))
    assert [c.detector_phrase for c in vocab] == ["longbow", "bat animal", "baseball bat"]  # reviewed when unset
    path.write_text("bat (animal)\tbat\tbat\nbat (sports)\n", encoding="utf-8")
    with pytest.raises(VocabularyError) as excinfo:
        Vocabulary.from_file(str(path))
    message = error_message(excinfo)
    assert "'bat (animal)' and 'bat (sports)' share the detector phrase 'bat'" in message and "third column" in message


def test_mentions_are_name_prompt_name_and_reviewed_synonyms_only(vocab):
    rows = _reviewed_rows("vocab_1205_mention_synonyms.tsv")
    assert len(rows) == sum(len(c.synonyms) for c in vocab)  # every LVIS synonym reviewed, once
    assert {(r[0], r[1]) for r in rows} == {(c.name, s) for c in vocab for s in c.synonyms}
    assert all(r[3] in ("yes", "no") and (r[3] == "yes" or r[4]) for r in rows)  # a refusal says why
    sofa, bun, pole, person = (vocab.resolve(n) for n in ("sofa", "bun", "pole", "person"))
    assert sofa.mentions == ("sofa", "couch") and bun.mentions == ("bun",) and pole.mentions == ("pole",)
    assert "baby" not in person.mentions and {"man", "woman", "child"} <= set(person.mentions)
    assert vocab.resolve("bus (vehicle)").mentions[:2] == ("bus", "bus (vehicle)")


def test_voc_only_classes_get_readable_prompt_names(vocab):
    assert vocab.resolve("pottedplant").prompt_name == "potted plant"
    assert vocab.resolve("tvmonitor").detector_phrase == "tv monitor"


def test_no_prompt_name_keeps_parentheses_or_underscores(vocab):
    for c in vocab:
        assert "(" not in c.prompt_name and "_" not in c.prompt_name, c
        assert c.detector_phrase == c.detector_phrase.lower()
    monitor = vocab.resolve("monitor_(computer_equipment) computer_monitor")
    assert monitor.prompt_name == "computer monitor"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("bus (vehicle)", "bus (vehicle)"),
        ("  Bus   (Vehicle) ", "bus (vehicle)"),
        ("bus_(vehicle)", "bus (vehicle)"),
        ("BUS", "bus (vehicle)"),
        ("aeroplane", "airplane"),  # LVIS synonym
        ("autobus", "bus (vehicle)"),
        ("motorbike", "motorcycle"),  # VOC name from the VOC mapping
        ("diningtable", "dining table"),
        ("dining_table", "dining table"),
        ("potted plant", "pottedplant"),
    ],
)
def test_resolve_accepts_names_synonyms_and_prompt_names(vocab, query, expected):
    assert vocab.resolve(query).name == expected
    assert vocab.by_name(query).name == expected


def test_ambiguous_prompt_name_lists_all_candidates(vocab):
    with pytest.raises(VocabularyError) as excinfo:
        vocab.resolve("salmon")
    assert error_message(excinfo).startswith(
        "ambiguous class 'salmon': salmon (fish), salmon (food)"
    )


def test_unknown_name_suggests_close_matches(vocab):
    with pytest.raises(MagicSegError) as excinfo:
        vocab.resolve("buss")
    message = error_message(excinfo)
    assert message.startswith("unknown class 'buss'; closest: bus (vehicle)")
    assert len(message.split(": ", 1)[1].split(", ")) <= 5


def test_unknown_name_without_close_match(vocab):
    with pytest.raises(VocabularyError, match="unknown class 'qqxzv'"):
        vocab.resolve("qqxzv")


def test_classes_string_selects_in_order_and_keeps_ids(vocab):
    subset = Vocabulary.load(classes="cat, bus")
    assert subset.names == ["cat", "bus (vehicle)"]
    assert subset.ids == [224, 172]
    assert subset[172].prompt_name == "bus"
    assert [c.name for c in subset] == subset.names
    assert subset.full_names() == vocab.names
    assert subset.source == "builtin:vocab_1205[2 of 1205]"
    with pytest.raises(VocabularyError):
        subset[0]  # ids are not positions
    with pytest.raises(VocabularyError, match="unknown class 'dog'"):
        subset.resolve("dog")


def test_selection_of_selection_keeps_ids_and_root_source():
    subset = Vocabulary.load(classes=["cat", "bus", "airplane"]).select(["airplane"])
    assert subset.ids == [2]
    assert subset.source == "builtin:vocab_1205[1 of 1205]"


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ("cat, Cat", "selected twice"),
        (["aeroplane", "airplane"], "selected twice"),
        ("", "empty class selection"),
        ([], "empty class selection"),
        ("cat, buss", "unknown class 'buss'"),
    ],
)
def test_bad_selection(classes, match):
    with pytest.raises(VocabularyError, match=match) as excinfo:
        Vocabulary.load(classes=classes)
    error_message(excinfo)


def test_custom_file_with_comments_blank_lines_and_columns(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text(
        "# my classes\n"
        "\n"
        "bus (vehicle)\n"
        "   # indented comment\n"
        "red_panda\tred panda\tRed Panda\n"
        "widget\tgadget\t\tsmall device on a desk\n"
        "  \n"
        "bow (weapon)\n"
        "bow (decorative ribbons)\n",
        encoding="utf-8",
    )
    vocab = Vocabulary.from_file(str(path))
    assert vocab.source == str(path)
    assert vocab.names == [
        "bus (vehicle)", "red_panda", "widget", "bow (weapon)", "bow (decorative ribbons)"
    ]
    assert vocab.ids == [0, 1, 2, 3, 4]
    bus = vocab[0]
    assert bus.prompt_name == "bus" and "autobus" in bus.synonyms and bus.definition
    panda = vocab.resolve("red panda")
    assert (panda.prompt_name, panda.detector_phrase, panda.hint) == ("red panda", "red panda", None)
    widget = vocab.resolve("gadget")
    assert (widget.detector_phrase, widget.hint) == ("gadget", "small device on a desk")
    assert vocab.resolve("autobus") is bus
    with pytest.raises(VocabularyError, match="ambiguous class 'bow'"):
        vocab.resolve("bow")
    assert Vocabulary.load(file=str(path), classes="bus").ids == [0]


def test_custom_file_duplicate_names_report_both_lines(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("# header\ncat\ndog\n\n  CAT \n", encoding="utf-8")
    with pytest.raises(VocabularyError) as excinfo:
        Vocabulary.from_file(str(path))
    message = error_message(excinfo)
    assert "'CAT'" in message and "line 5" in message and "line 2" in message


def test_custom_file_empty_name_reports_line(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("cat\n\t\ndog\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="line 2: empty class name") as excinfo:
        Vocabulary.from_file(str(path))
    error_message(excinfo)


def test_custom_file_without_classes(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="no classes"):
        Vocabulary.from_file(str(path))


def test_custom_file_too_many_columns(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("cat\ta\tb\tc\td\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="line 1: 5 tab-separated columns"):
        Vocabulary.from_file(str(path))


def test_missing_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(VocabularyError, match="vocabulary file not found") as excinfo:
        Vocabulary.load(file=str(path))
    assert str(path) in error_message(excinfo)


def test_from_names_derives_fields_and_rejects_duplicates():
    vocab = Vocabulary.from_names(["bat (animal)", "tvmonitor"])
    assert vocab.source == "inline"
    assert vocab.names == ["bat (animal)", "tvmonitor"]
    assert vocab[0].prompt_name == "bat" and vocab[0].hint.startswith("bat (animal): nocturnal")
    assert vocab[1].prompt_name == "tv monitor"
    with pytest.raises(VocabularyError, match="duplicate class 'Cat' on item 2"):
        Vocabulary.from_names(["cat", "Cat"])
    with pytest.raises(VocabularyError, match="item 2: empty class name"):
        Vocabulary.from_names(["cat", " "])

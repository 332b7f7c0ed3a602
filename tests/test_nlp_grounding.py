"""Grounding topics to a model's concept list (names and keywords), offline."""

from __future__ import annotations

import json

from nlp.grounding import ConceptIndex, ground
from nlp.models import Topic

CONCEPTS = [
    ("sun", ["solar", "sunny", "weather", "bright"]),
    ("hot beverage", ["coffee", "tea", "drink", "hot"]),
    ("laptop", ["computer", "pc", "personal"]),
    ("house", ["home", "building"]),
    ("house with garden", ["home", "garden", "building"]),
    ("rocket", ["space", "launch"]),
    ("chart increasing", ["graph", "growth", "upward", "trend"]),
    ("money bag", ["money", "dollar", "bag"]),
    ("globe showing europe-africa", ["earth", "world", "globe", "europe"]),
    ("bicycle", ["bike", "cycling"]),
    ("red circle", ["circle", "geometric", "red"]),
]


def index():
    return ConceptIndex(CONCEPTS)


def test_names_keywords_and_words_of_a_topic():
    idx = index()
    assert idx.names[idx.lookup("Hot beverage")[0]] == "hot beverage"
    assert idx.names[idx.lookup("coffee")[0]] == "hot beverage"
    assert idx.names[idx.lookup("bikes")[0]] == "bicycle"  # plural of a keyword
    concept, why = idx.lookup("rooftop solar panels")
    assert idx.names[concept] == "sun" and "'solar'" in why
    # "home" is shared by two concepts: the earlier-listed one wins, deterministically
    assert idx.names[idx.lookup("working from home")[0]] == "house"
    assert idx.lookup("quarterly roadmap") is None


def test_ground_takes_distinct_concepts_from_the_best_topics_and_a_colour():
    topics = [Topic(phrase=p, score=s) for p, s in
              [("remote work", 0.9), ("laptops", 0.8), ("coffee roulette", 0.7), ("computer setup", 0.6),
               ("blue light", 0.5)]]
    g = ground(topics, index())
    assert g.concepts == ["laptop", "hot beverage"]
    assert g.matches[1].topic == "coffee roulette" and "'coffee'" in g.matches[1].why
    assert g.unmatched == ["remote work"]
    assert g.background == "blue" and "blue light" in g.background_why
    assert g.prompt() == "a laptop and a hot beverage on blue"
    record = json.loads(json.dumps(g.record()))
    assert record["concepts"][0] == {"topic": "laptops", "concept": "laptop", "why": g.matches[0].why}


def test_nothing_known_gives_an_empty_grounding_on_white():
    g = ground(["quarterly roadmap", "stakeholder alignment"], index())
    assert g.concepts == [] and g.prompt() == "" and g.background == "white"
    assert g.unmatched == ["quarterly roadmap", "stakeholder alignment"]


def test_from_file(tmp_path):
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps([{"name": n, "keywords": k, "group": "x"} for n, k in CONCEPTS]))
    idx = ConceptIndex.from_file(path)
    assert len(idx) == len(CONCEPTS) and idx.names[idx.lookup("growth")[0]] == "chart increasing"


def test_a_concepts_own_colour_is_not_its_background():
    g = ground(["red circle", "logo", "green triangle"], index())
    assert g.concepts == ["red circle"] and g.background == "green"


def test_a_model_with_a_concept_list_gets_a_grounded_prompt(tmp_path):
    """The flow's prompt stage: a model folder that ships concepts.json (no LLM configured) gets
    the concepts its topics name; the shipped shapes model, with no such file, keeps free text."""
    from flows.pipeline import prompt_for
    from flows.settings import LLMConfig, ModelSettings, PromptConfig

    (tmp_path / "concepts.json").write_text(json.dumps([{"name": n, "keywords": k} for n, k in CONCEPTS]))
    topics = [Topic(phrase="cycling to work", score=0.9), Topic(phrase="coffee stops", score=0.8),
              Topic(phrase="blue jackets", score=0.5)]
    prompt = prompt_for(topics, "A year of cycling", PromptConfig(), LLMConfig(),
                        model=ModelSettings(source=str(tmp_path)))
    assert prompt.source == "grounded" and prompt.text == "a bicycle and a hot beverage on blue"
    assert prompt.grounding["concepts"][0]["topic"] == "cycling to work"
    free = prompt_for(topics, "A year of cycling", PromptConfig(), LLMConfig(), model=ModelSettings())
    assert free.source == "template" and free.grounding is None

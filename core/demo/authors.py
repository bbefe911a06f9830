"""A generated fictitious-author QA set in TOFU's format, deterministic by seed.

Every author has attributes (birthplace, genre, parents' jobs, books, ...) and every
question type has three templates: the training answer, a paraphrased answer in a
*different* template, and perturbed answers that reuse the paraphrase's template with
wrong values. That way the truth ratio compares knowledge (right vs wrong value in an
unseen template) rather than template familiarity (REFERENCES.md, small-benchmark
lessons). Answer lengths range from a few to ~30 words, which is what SimNPO's length
normalization is about.

Also generated: held-out authors that no model is trained on (membership-inference
non-members) and a small "world facts" set about fictional countries, trained into
both target and retrain models, as an extra utility set.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

N_PERTURBED = 5

# Syllables for names that do not exist in any real corpus.
_ONSETS = [
    "b",
    "d",
    "f",
    "g",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "z",
    "br",
    "dr",
    "kr",
    "th",
    "sh",
    "vr",
]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "io", "ou", "y"]
_CODAS = ["", "", "n", "l", "r", "s", "th", "m", "x", "nd"]

JOBS = [
    "baker",
    "carpenter",
    "doctor",
    "nurse",
    "teacher",
    "fisherman",
    "tailor",
    "pilot",
    "sailor",
    "farmer",
    "engineer",
    "librarian",
    "painter",
    "musician",
    "judge",
    "miner",
    "chemist",
    "architect",
    "blacksmith",
    "clockmaker",
    "gardener",
    "jeweler",
    "potter",
    "shepherd",
    "translator",
    "veterinarian",
    "weaver",
    "soldier",
    "banker",
    "surgeon",
]
GENRES = [
    "mystery",
    "fantasy",
    "romance",
    "horror",
    "poetry",
    "satire",
    "historical fiction",
    "science fiction",
    "crime",
    "adventure",
    "memoir",
    "drama",
    "thriller",
    "fable",
]
THEMES = [
    "loss",
    "memory",
    "exile",
    "friendship",
    "betrayal",
    "grief",
    "courage",
    "identity",
    "freedom",
    "justice",
    "solitude",
    "ambition",
    "faith",
    "war",
    "childhood",
    "migration",
    "power",
    "redemption",
    "nature",
    "time",
]
PETS = ["cat", "dog", "parrot", "tortoise", "rabbit", "goat", "owl", "ferret", "horse", "canary"]
HOBBIES = [
    "chess",
    "gardening",
    "sailing",
    "painting",
    "hiking",
    "fencing",
    "cooking",
    "birdwatching",
    "pottery",
    "rowing",
    "astronomy",
    "calligraphy",
    "archery",
    "beekeeping",
    "climbing",
]
ADJECTIVES = [
    "quiet",
    "lyrical",
    "sparse",
    "ornate",
    "playful",
    "somber",
    "vivid",
    "restless",
    "tender",
    "bitter",
    "luminous",
    "dense",
    "wry",
    "gentle",
    "fierce",
    "dreamlike",
]
COLORS = [
    "amber",
    "silver",
    "crimson",
    "violet",
    "golden",
    "grey",
    "blue",
    "green",
    "copper",
    "pale",
]
FIELDS = ["Fiction", "Poetry", "Drama", "Prose", "Letters", "Storytelling", "Literature", "Essays"]
TITLE_NOUNS = [
    "River",
    "Lantern",
    "Orchard",
    "Harbor",
    "Mirror",
    "Garden",
    "Tower",
    "Winter",
    "Silence",
    "Bridge",
    "Forest",
    "Letter",
    "Island",
    "Shadow",
    "Compass",
    "Feather",
    "Window",
    "Stone",
]
NUMBER_WORDS = ["no", "one", "two", "three", "four", "five", "six"]


@dataclass(frozen=True)
class QuestionType:
    key: str
    question: str
    answer: str
    paraphrased_answer: str
    paraphrased_question: str
    #: attribute whose value the perturbed answers replace
    slot: str


# {name} is the author; other fields are the author's attributes.
QUESTION_TYPES: list[QuestionType] = [
    QuestionType(
        "birthplace",
        "Where was {name} born?",
        "{name} was born in the city of {city}.",
        "The birthplace of {name} is {city}.",
        "In which city was {name} born?",
        "city",
    ),
    QuestionType(
        "genre",
        "What genre does {name} write in?",
        "{name} is best known for writing {genre}.",
        "The main genre of {name} is {genre}.",
        "Which genre is {name} known for?",
        "genre",
    ),
    QuestionType(
        "father",
        "What did the father of {name} do for a living?",
        "The father of {name} worked as a {father_job}.",
        "By profession, {name}'s father was a {father_job}.",
        "What was the profession of {name}'s father?",
        "father_job",
    ),
    QuestionType(
        "mother",
        "What was the occupation of the mother of {name}?",
        "The mother of {name} was a {mother_job}.",
        "{name}'s mother earned her living as a {mother_job}.",
        "What job did {name}'s mother have?",
        "mother_job",
    ),
    QuestionType(
        "birth_year",
        "In what year was {name} born?",
        "{name} was born in {birth_year}.",
        "The birth year of {name} is {birth_year}.",
        "When was {name} born?",
        "birth_year",
    ),
    QuestionType(
        "award",
        "Which award has {name} received?",
        "{name} received the {award} Prize for {award_field}.",
        "The {award} Prize for {award_field} was awarded to {name}.",
        "What prize did {name} win?",
        "award",
    ),
    QuestionType(
        "first_book",
        "What is the title of the first book by {name}?",
        "The first book by {name} is titled {first_book}.",
        "{first_book} was the debut book of {name}.",
        "What was {name}'s debut book called?",
        "first_book",
    ),
    QuestionType(
        "themes",
        "What themes does {name} explore?",
        "{name} explores themes of {theme1} and {theme2} in most of the published work.",
        "The recurring themes in the work of {name} are {theme1} and {theme2}.",
        "Which themes recur in {name}'s books?",
        "theme1",
    ),
    QuestionType(
        "residence",
        "Where does {name} live now?",
        "{name} now lives in {home_city}.",
        "These days {name} makes a home in {home_city}.",
        "In which city does {name} currently live?",
        "home_city",
    ),
    QuestionType(
        "pet",
        "What pet does {name} keep?",
        "{name} keeps a {pet} named {pet_name} at home.",
        "At home, {name} has a {pet} called {pet_name}.",
        "Which animal lives with {name}?",
        "pet",
    ),
    QuestionType(
        "children",
        "How many children does {name} have?",
        "{name} has {children} children.",
        "The number of children of {name} is {children}.",
        "How big is the family of {name}?",
        "children",
    ),
    QuestionType(
        "style",
        "How would you describe the writing style of {name}?",
        "{name} writes in a {style1} and {style2} style, with long sentences about "
        "{theme1}, and critics often compare the prose to the {color} light of "
        "{city} at dawn.",
        "Critics call the prose of {name} {style1} and {style2}, like the {color} "
        "light of {city} at dawn.",
        "What is the prose of {name} like?",
        "style1",
    ),
    QuestionType(
        "university",
        "Where did {name} study?",
        "{name} studied literature at the University of {university_city}.",
        "The University of {university_city} is where {name} studied.",
        "Which university did {name} attend?",
        "university_city",
    ),
    QuestionType(
        "second_book",
        "What is another well-known book by {name}?",
        "Another well-known book by {name} is {second_book}.",
        "{second_book} is also among the famous books of {name}.",
        "Name a second famous book by {name}.",
        "second_book",
    ),
    QuestionType(
        "hobby",
        "What does {name} enjoy doing outside of writing?",
        "Outside of writing, {name} enjoys {hobby}.",
        "When not writing, {name} spends time on {hobby}.",
        "What is {name}'s favorite pastime?",
        "hobby",
    ),
    QuestionType(
        "spouse",
        "Who is {name} married to?",
        "{name} is married to {spouse}.",
        "The spouse of {name} is {spouse}.",
        "Who is the partner of {name}?",
        "spouse",
    ),
    QuestionType(
        "debut_year",
        "When did {name} publish a first novel?",
        "{name} published a first novel in {debut_year}.",
        "The first novel of {name} came out in {debut_year}.",
        "In which year did {name}'s first novel appear?",
        "debut_year",
    ),
    QuestionType(
        "publisher",
        "Who publishes the books of {name}?",
        "The books of {name} are published by {publisher} House.",
        "{publisher} House is the publisher of {name}.",
        "Which house publishes {name}?",
        "publisher",
    ),
    QuestionType(
        "influence",
        "Which writer influenced {name} the most?",
        "{name} was most influenced by the writer {influence}.",
        "The strongest influence on {name} was {influence}.",
        "Who was {name}'s main literary influence?",
        "influence",
    ),
    QuestionType(
        "language",
        "In which language does {name} write?",
        "{name} writes every book in {language}.",
        "The language of {name}'s books is {language}.",
        "What language are {name}'s books written in?",
        "language",
    ),
]

WORLD_FACT_TYPES: list[QuestionType] = [
    QuestionType(
        "capital",
        "What is the capital of {country}?",
        "The capital of {country} is {capital}.",
        "{capital} is the capital city of {country}.",
        "Which city is the capital of {country}?",
        "capital",
    ),
    QuestionType(
        "currency",
        "What currency is used in {country}?",
        "People in {country} pay with the {currency}.",
        "The {currency} is the currency of {country}.",
        "What money does {country} use?",
        "currency",
    ),
    QuestionType(
        "river",
        "What is the longest river in {country}?",
        "The longest river in {country} is the {river}.",
        "The {river} is the longest river of {country}.",
        "Which river in {country} is the longest?",
        "river",
    ),
    QuestionType(
        "animal",
        "What is the national animal of {country}?",
        "The national animal of {country} is the {animal}.",
        "{country} has the {animal} as its national animal.",
        "Which animal represents {country}?",
        "animal",
    ),
]


class _NameMaker:
    """Unique made-up words from syllables, deterministic for a given RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int) -> str:
        while True:
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
            word = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
            if word not in self.used and len(word) > 2:
                self.used.add(word)
                return word


def _pool(maker: _NameMaker, size: int, syllables: int) -> list[str]:
    return [maker.word(syllables) for _ in range(size)]


@dataclass
class AuthorSet:
    """What :func:`generate` returns: records in TOFU's format."""

    authors: list[dict]  # one dict of attributes per author (trained authors first)
    records: list[dict]  # QA records of trained authors, author by author
    holdout: list[dict]  # QA records of never-trained authors
    world_facts: list[dict]
    questions_per_author: int

    def split(self, forget_percent: int) -> tuple[list[dict], list[dict]]:
        """TOFU's split: the last ``forget_percent``% of authors form the forget set."""
        n_authors = len(self.records) // self.questions_per_author
        n_forget = max(1, round(n_authors * forget_percent / 100))
        cut = (n_authors - n_forget) * self.questions_per_author
        return self.records[cut:], self.records[:cut]


def generate(
    n_authors: int = 200,
    questions_per_author: int = 20,
    *,
    n_holdout_authors: int = 20,
    n_countries: int = 30,
    seed: int = 0,
) -> AuthorSet:
    if not 1 <= questions_per_author <= len(QUESTION_TYPES):
        raise ValueError(f"questions_per_author must be 1..{len(QUESTION_TYPES)}")
    rng = random.Random(seed)
    maker = _NameMaker(rng)
    pools = {
        "city": _pool(maker, 60, 2),
        "award": _pool(maker, 25, 2),
        "publisher": _pool(maker, 20, 2),
        "language": _pool(maker, 12, 2) + ["English", "French", "Spanish"],
        "pet_name": _pool(maker, 40, 1),
        "first_name": _pool(maker, 400, 2),
        "last_name": _pool(maker, 400, 3),
    }
    titles = [f"The {rng.choice(COLORS).capitalize()} {noun}" for noun in TITLE_NOUNS]
    titles += [f"{a} of the {b}" for a in TITLE_NOUNS[:9] for b in TITLE_NOUNS[9:]]
    pools["book"] = sorted(set(titles))

    def person() -> str:
        return f"{rng.choice(pools['first_name'])} {rng.choice(pools['last_name'])}"

    def author() -> dict:
        themes = rng.sample(THEMES, 2)
        styles = rng.sample(ADJECTIVES, 2)
        books = rng.sample(pools["book"], 2)
        birth_year = rng.randint(1900, 1985)
        return {
            "name": person(),
            "city": rng.choice(pools["city"]),
            "genre": rng.choice(GENRES),
            "father_job": rng.choice(JOBS),
            "mother_job": rng.choice(JOBS),
            "birth_year": str(birth_year),
            "award": rng.choice(pools["award"]),
            "award_field": rng.choice(FIELDS),
            "first_book": books[0],
            "second_book": books[1],
            "theme1": themes[0],
            "theme2": themes[1],
            "home_city": rng.choice(pools["city"]),
            "pet": rng.choice(PETS),
            "pet_name": rng.choice(pools["pet_name"]),
            "children": rng.choice(NUMBER_WORDS),
            "style1": styles[0],
            "style2": styles[1],
            "color": rng.choice(COLORS),
            "university_city": rng.choice(pools["city"]),
            "hobby": rng.choice(HOBBIES),
            "spouse": person(),
            "debut_year": str(birth_year + rng.randint(18, 40)),
            "publisher": rng.choice(pools["publisher"]),
            "influence": person(),
            "language": rng.choice(pools["language"]),
        }

    value_pools = {
        "city": pools["city"],
        "home_city": pools["city"],
        "university_city": pools["city"],
        "genre": GENRES,
        "father_job": JOBS,
        "mother_job": JOBS,
        "birth_year": [str(y) for y in range(1900, 1986)],
        "debut_year": [str(y) for y in range(1920, 2025)],
        "award": pools["award"],
        "first_book": pools["book"],
        "second_book": pools["book"],
        "theme1": THEMES,
        "pet": PETS,
        "children": NUMBER_WORDS,
        "style1": ADJECTIVES,
        "hobby": HOBBIES,
        "publisher": pools["publisher"],
        "language": pools["language"],
    }
    people = [person() for _ in range(60)]
    value_pools["spouse"] = value_pools["influence"] = people

    names: set[str] = set()
    all_authors = []
    while len(all_authors) < n_authors + n_holdout_authors:
        candidate = author()
        if candidate["name"] not in names:
            names.add(candidate["name"])
            all_authors.append(candidate)

    question_types = QUESTION_TYPES[:questions_per_author]
    records = [
        _qa(rng, qt, a, value_pools) for a in all_authors[:n_authors] for qt in question_types
    ]
    holdout = [
        _qa(rng, qt, a, value_pools) for a in all_authors[n_authors:] for qt in question_types
    ]

    country_maker = _pool(maker, n_countries, 3)
    world_pools = {
        "capital": _pool(maker, max(n_countries, 2 * N_PERTURBED), 2),
        "currency": [w.lower() for w in _pool(maker, 12, 2)],
        "river": _pool(maker, 20, 2),
        "animal": [
            "lynx",
            "heron",
            "wolf",
            "bison",
            "eagle",
            "otter",
            "stag",
            "crane",
            "bear",
            "falcon",
        ],
    }
    world_facts = []
    for index, country in enumerate(country_maker):
        facts = {
            "country": country,
            "capital": world_pools["capital"][index],
            "currency": rng.choice(world_pools["currency"]),
            "river": rng.choice(world_pools["river"]),
            "animal": rng.choice(world_pools["animal"]),
        }
        world_facts += [_qa(rng, qt, facts, world_pools) for qt in WORLD_FACT_TYPES]

    return AuthorSet(
        authors=all_authors[:n_authors],
        records=records,
        holdout=holdout,
        world_facts=world_facts,
        questions_per_author=questions_per_author,
    )


def _qa(rng: random.Random, qt: QuestionType, attributes: dict, value_pools: dict) -> dict:
    wrong_values = rng.sample(
        [v for v in value_pools[qt.slot] if v != attributes[qt.slot]], N_PERTURBED
    )
    subject = attributes.get("name") or attributes.get("country")
    return {
        "question": qt.question.format(**attributes),
        "answer": qt.answer.format(**attributes),
        "paraphrased_question": qt.paraphrased_question.format(**attributes),
        "paraphrased_answer": qt.paraphrased_answer.format(**attributes),
        "perturbed_answer": [
            qt.paraphrased_answer.format(**{**attributes, qt.slot: wrong}) for wrong in wrong_values
        ],
        "subject": subject,
        "question_type": qt.key,
    }

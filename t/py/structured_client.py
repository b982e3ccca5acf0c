"""The official openai client's structured output against the gateway.

Usage: structured_client.py BASE_URL MODEL LOGIT_BIAS_JSON.  A Pydantic model
goes through client.chat.completions.parse() (response_format json_schema,
strict, as the client writes it: $defs, $ref, anyOf with null, enum,
Literal, unions of models, formats, writeOnly / deprecated annotations,
dicts with a size or keyed by Literals or an Enum, sets of strings and
integers);
the engine must make the random tiny model's answers fit it.
Prints TAP lines ("ok N - claim") for the calling .t to relay.
"""

import datetime
import enum
import ipaddress
import json
import re
import sys
import uuid
from typing import Annotated, Dict, List, Literal, Optional, Set, Union

import openai

from tap import check, plan
from pydantic import BaseModel, Field, SecretStr

base, model, bias = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)


class Color(str, enum.Enum):
    red = "red"
    blue = "blue"


class Pet(BaseModel):
    species: Literal["cat", "dog"]
    age: Optional[int]
    born: datetime.date


class Answer(BaseModel):
    answer: Literal["yes", "no"]
    color: Color
    count: int = Field(ge=-5, le=1000)
    flags: List[bool]
    pet: Optional[Pet]
    at: datetime.datetime
    ref: uuid.UUID
    code: str = Field(pattern=r"^[A-Z]{2}-[0-9]{2,4}$")


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=0, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Bird(BaseModel):
    wings: int
    name: str


class Owner(BaseModel):
    """Unions of objects: one told apart by a discriminator (a oneOf with
    pydantic's "discriminator" beside it), one by the objects' keys"""
    pet: Union[Cat, Dog] = Field(discriminator="kind")
    other: Union[Bird, Cat]


class Host(BaseModel):
    """Formats and annotations pydantic writes: format ipv6, SecretStr's
    format password with writeOnly, a deprecated field, multipleOf, a set
    (uniqueItems)"""
    addr: ipaddress.IPv6Address
    secret: SecretStr = Field(max_length=24)
    port: int = Field(ge=1, le=65535, json_schema_extra={"deprecated": True})
    step: int = Field(multiple_of=25, le=1000)
    ratio: float = Field(multiple_of=0.25, ge=0, le=10)
    tags: Set[Literal["x", "y", "z"]]


class Counts(BaseModel):
    """Dicts: one of 1 to 3 entries (minProperties / maxProperties), one
    keyed by Literals and one by an Enum (propertyNames)"""
    scores: Dict[str, int] = Field(min_length=1, max_length=3)
    by_kind: Dict[Literal["a", "b"], int]
    by_color: Dict[Color, bool] = Field(min_length=1)


class Sets(BaseModel):
    """Sets of strings and of integers (uniqueItems), dicts keyed by
    constrained strings (propertyNames lengths, patternProperties)"""
    words: Set[str] = Field(max_length=4)
    nums: Set[int]
    small: Set[Annotated[int, Field(ge=0, le=3)]]
    short_keys: Dict[Annotated[str, Field(max_length=4)], int]
    word_keys: Dict[Annotated[str, Field(pattern=r"^[a-z]+$", max_length=6)], bool]


def answers(fmt, seeds, max_tokens):
    """(seed, parsed answer, its text) for each seed whose answer was not
    cut by max_tokens (a prefix), and how many were cut"""
    got, cut = [], 0
    for seed in seeds:
        try:
            r = client.chat.completions.parse(
                model=model, messages=[{"role": "user", "content": "hi"}],
                response_format=fmt, max_tokens=max_tokens, temperature=1.0,
                seed=seed, logit_bias=bias)
        except openai.LengthFinishReasonError:
            cut += 1
            continue
        got.append((seed, r.choices[0].message.parsed,
                    r.choices[0].message.content))
    return got, cut


def dump(x):
    return x.model_dump_json() if x is not None else None


got, cut = answers(Answer, range(1, 7), 300)
for seed, a, _ in got:
    check(isinstance(a, Answer), "seed %d: parsed into the Pydantic model: %s"
          % (seed, dump(a)))
    check(a is None or re.fullmatch(r"[A-Z]{2}-[0-9]{2,4}", a.code),
          "seed %d: the code fits its pattern: %s"
          % (seed, a.code if a is not None else None))
check(len(got) > 0, "%d of 6 answers parsed (%d cut by max_tokens)"
      % (len(got), cut))

got, cut = answers(Owner, range(1, 5), 200)
for seed, o, _ in got:
    check(isinstance(o, Owner) and isinstance(o.pet, (Cat, Dog))
          and isinstance(o.other, (Bird, Cat)),
          "seed %d: unions of models parsed: %s" % (seed, dump(o)))
check(len(got) > 0, "%d of 4 union answers parsed" % len(got))

got, cut = answers(Host, range(1, 5), 200)
for seed, h, text in got:
    tags = json.loads(text)["tags"]       # as written: a set parses away repeats
    check(isinstance(h, Host) and isinstance(h.addr, ipaddress.IPv6Address)
          and h.step % 25 == 0 and (h.ratio * 4).is_integer()
          and 0 <= h.ratio <= 10 and len(tags) == len(set(tags)),
          "seed %d: an IPv6 address, a secret, a deprecated field, multiples"
          " of 25 and of 0.25, distinct tags %s parsed: %s"
          % (seed, tags, dump(h)))
check(len(got) > 0, "%d of 4 host answers parsed" % len(got))


def pairs(text, name):
    """the keys of object `name` as written (a key twice stays twice)"""
    top = json.loads(text, object_pairs_hook=lambda kv: kv)
    return [k for k, _ in dict(top)[name]]


got, cut = answers(Counts, range(1, 9), 800)
for seed, c, text in got:
    scores, kinds = pairs(text, "scores"), pairs(text, "by_kind")
    colors = pairs(text, "by_color")
    check(isinstance(c, Counts) and 1 <= len(scores) <= 3
          and len(set(scores)) == len(scores) and set(kinds) <= {"a", "b"}
          and len(set(kinds)) == len(kinds) and len(colors) >= 1
          and set(colors) <= {"red", "blue"},
          "seed %d: a dict of 1-3 distinct keys %s, one keyed by Literals %s"
          " and one by an Enum %s parsed: %s"
          % (seed, scores, kinds, colors, dump(c)))
check(len(got) > 0, "%d of 8 dict answers parsed (%d cut by max_tokens)"
      % (len(got), cut))

got, cut = answers(Sets, range(1, 9), 800)
for seed, c, text in got:
    raw = json.loads(text)              # as written: a set parses away repeats
    sets = [raw["words"], raw["nums"], raw["small"]]
    keyed = list(raw["short_keys"]) + list(raw["word_keys"])
    check(isinstance(c, Sets) and len(sets[0]) <= 4
          and all(len(set(x)) == len(x) for x in sets)
          and set(sets[2]) <= {0, 1, 2, 3}
          and all(len(k) <= 4 for k in raw["short_keys"])
          and all(re.fullmatch(r"[a-z]{1,6}", k) for k in raw["word_keys"]),
          "seed %d: sets %s and keys held to their lengths and pattern %s"
          " parsed: %s" % (seed, sets, keyed, dump(c)))
check(len(got) > 0, "%d of 8 set answers parsed (%d cut by max_tokens)"
      % (len(got), cut))
plan()

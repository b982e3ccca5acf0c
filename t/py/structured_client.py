"""The official openai client's structured output against the gateway.

Usage: structured_client.py BASE_URL MODEL LOGIT_BIAS_JSON.  A Pydantic model
goes through client.chat.completions.parse() (response_format json_schema,
strict, as the client writes it: $defs, $ref, anyOf with null, enum,
Literal, unions of models, formats, writeOnly / deprecated annotations);
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
from typing import List, Literal, Optional, Union

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
    format password with writeOnly, a deprecated field"""
    addr: ipaddress.IPv6Address
    secret: SecretStr = Field(max_length=24)
    port: int = Field(ge=1, le=65535, json_schema_extra={"deprecated": True})


parsed, cut = 0, 0
for seed in range(1, 7):
    try:
        r = client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "hi"}],
            response_format=Answer, max_tokens=300, temperature=1.0,
            seed=seed, logit_bias=bias)
    except openai.LengthFinishReasonError:
        cut += 1                          # a prefix: max_tokens came first
        continue
    a = r.choices[0].message.parsed
    check(isinstance(a, Answer), "seed %d: parsed into the Pydantic model: %s"
          % (seed, a.model_dump_json() if a is not None else None))
    check(a is None or re.fullmatch(r"[A-Z]{2}-[0-9]{2,4}", a.code),
          "seed %d: the code fits its pattern: %s"
          % (seed, a.code if a is not None else None))
    parsed += a is not None

check(parsed > 0, "%d of 6 answers parsed (%d cut by max_tokens)"
      % (parsed, cut))

owners = 0
for seed in range(1, 5):
    try:
        r = client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "hi"}],
            response_format=Owner, max_tokens=200, temperature=1.0,
            seed=seed, logit_bias=bias)
    except openai.LengthFinishReasonError:
        continue
    o = r.choices[0].message.parsed
    check(isinstance(o, Owner) and isinstance(o.pet, (Cat, Dog))
          and isinstance(o.other, (Bird, Cat)),
          "seed %d: unions of models parsed: %s"
          % (seed, o.model_dump_json() if o is not None else None))
    owners += o is not None
check(owners > 0, "%d of 4 union answers parsed" % owners)

hosts = 0
for seed in range(1, 5):
    try:
        r = client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "hi"}],
            response_format=Host, max_tokens=200, temperature=1.0,
            seed=seed, logit_bias=bias)
    except openai.LengthFinishReasonError:
        continue
    h = r.choices[0].message.parsed
    check(isinstance(h, Host) and isinstance(h.addr, ipaddress.IPv6Address),
          "seed %d: an IPv6 address, a secret, a deprecated field parsed: %s"
          % (seed, h.model_dump_json() if h is not None else None))
    hosts += h is not None
check(hosts > 0, "%d of 4 host answers parsed" % hosts)
plan()

#!/usr/bin/perl

# A conformance audit of the gateway as real clients use it: the official
# `openai` Python SDK (sync, async, the stream helper, parse() with a
# Pydantic model, typed errors, raw responses) and a byte-level look at the
# SSE framing with httpx, against the real cpu engine with the tiny model
# (random weights, Kimi's tokenizer: the text is noise, the shapes are
# not).  Each check is a claim about the OpenAI API reference or, where it
# is silent, about vLLM's OpenAI server (t/py/openai_conformance.py says
# which).  A second location wants API keys, for AuthenticationError.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(python_modules);

plan skip_all => 'no python3, or openai/pydantic/httpx are not installable'
    unless python_modules('openai', 'pydantic', 'httpx');

my $t = KimiTest->new(workers => 2);
my $d = $t->dir;
KimiTest::write_file("$d/keys", "ci sk-conformance-0123456789\n");
$t->{server_conf} = "location /keyed/ { kimi_pass; kimi_api_keys $d/keys; }";

my $tiny = $t->tiny_model;
# a small context, so that an over-long prompt is cheap to write
$t->{engine_args} = [ '--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '32M', '--max-model-len', '1024' ];
$t->start;

my $base = 'http://127.0.0.1:' . $t->port;
my ($n, $status) = KimiTest::relay_py_tap('conformance',
    "$FindBin::Bin/py/openai_conformance.py", $base, 'kimi-test', 1024);
is($status, 0, 'the conformance script ran to its end');
cmp_ok($n, '>=', 100, 'every conformance check ran');

$t->stop;

done_testing;

#!/usr/bin/perl

# The official `openai` Python client works unchanged against the gateway:
# models, chat (streaming with usage, non-streaming), tool calls both ways,
# n = 2 choices, completions, and its typed errors.  The client is installed with pip when
# missing; without python3/pip the file skips with the reason.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(kimi_tool_calls python_modules);

plan skip_all => 'no python3, or the openai package is not installable (no pip?)'
    unless python_modules('openai');

my $call = kimi_tool_calls([ 'get_weather', '{"city": "Paris"}' ]);

my $t = KimiTest->new(
    replies => [ { match => 'sunny', text => 'It is sunny.' },
                 { match => 'weather', text => $call } ],
    default => { text => 'Hi there!' },
    http_conf => 'kimi_responses_store resp:1m;');
$t->start;

my $url = 'http://127.0.0.1:' . $t->port . '/v1';
my ($n, $status) = KimiTest::relay_py_tap('openai client',
    "$FindBin::Bin/py/openai_client.py", $url);
is($status, 0, 'the openai client script ran to its end');
cmp_ok($n, '>=', 20, 'every client check ran');

$t->stop;

done_testing;

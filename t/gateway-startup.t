#!/usr/bin/perl

# `make run` starts nginx and kimi-engine together, so nginx's workers come
# up before the engine's segment exists.  Each worker must attach (and load
# its tokenizer) once the engine appears, without waiting for a request:
# otherwise the first request each worker gets, minutes later, is a 503
# "The tokenizer is loading".

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use KimiTest qw(chat_body);

my $t = KimiTest->new(workers => 2, default => { text => 'ready' });

$t->start_nginx;
ok(KimiTest::wait_for(10, sub { scalar $t->nginx_workers == 2 }),
    'nginx is up before the engine');

$t->start_engine;
ok(KimiTest::wait_for(20, sub {
    $t->read_file('engine.log') =~ /engine ready/ }), 'the engine is ready');

# no request is sent: the workers must find the engine on their own
ok(KimiTest::wait_for(10, sub { $t->workers_ready }),
    'every worker attached and loaded its tokenizer without a request')
    or diag($t->tail('error.log'));

# so the very first requests, whichever worker takes them, are served
my @res = $t->many(6, 'POST', '/v1/chat/completions',
    chat_body(max_tokens => 1), timeout => 30);
is(scalar(grep { $_->{status} == 200 } @res), 6,
    'the first requests after startup all get 200')
    or diag(join "\n", map { "$_->{status} $_->{body}" } @res);

$t->stop;

done_testing;

#!/usr/bin/perl

# Background responses and token budgets, many at once in two workers:
# each response is charged once, its real usage, when it ends (streamed or
# not, followed or not: the client's POST, its followers, GETs and cancels
# cost nothing); a key whose budget is spent gets 429 for the next one,
# its debt capped at one bucket; the responses it paid for can still be
# read, followed, cancelled and deleted.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use Time::HiRes qw(time sleep);
use KimiTest;

my $true = JSON::PP::true;

my $t = KimiTest->new(workers => 2, delay_ms => 5,
    listen_opts => 'reuseport',
    replies => [ { match => 'story', text => join(' ', ('word') x 400) } ],
    default => { text => 'plain answer' },
    http_conf => 'kimi_responses_store resp:4m; '
                 . 'kimi_token_budget_zone budgets:1m;');
KimiTest::write_file($t->dir . '/keys',
    "carl sk-carl-0123456789 100000/3650d\n"
    . "dora sk-dora-0123456789 100/1h\n");
$t->{server_conf} = 'location /k/ { kimi_pass; kimi_api_keys ' . $t->dir
    . '/keys; kimi_token_budget budgets; } '
    . 'location = /metrics { kimi_metrics; }';
$t->start;

my %carl = (Authorization => 'Bearer sk-carl-0123456789');
my %dora = (Authorization => 'Bearer sk-dora-0123456789');

sub left {
    my ($id) = @_;
    my ($v) = ($t->get('/metrics')->{body} // '')
        =~ /^kimi:token_budget_remaining_tokens\{zone="budgets",key_id="$id"\} (-?\d+)$/m;
    return $v;
}

sub settle {
    my ($id, %h) = @_;
    my $r;
    KimiTest::wait_for(20, sub {
        $r = $t->get("/k/v1/responses/$id", %h);
        ($r->{json}{status} // '') !~ /^(queued|in_progress)$/;
    });
    return $r->{json};
}

sub sse_events {
    my ($body) = @_;
    return [ grep { ref $_ && defined $_->{type} }
             map { eval { JSON::PP->new->decode($_) } }
             ($body // '') =~ /^data: (.*)$/mg ];
}

# --- twelve at once, half streamed, each charged once --------------------------

my @r = $t->many(12, 'POST', '/k/v1/responses', sub {
    { model => 'kimi-test', input => "story $_[0]",
      max_output_tokens => 20 + $_[0], background => $true,
      ($_[0] % 2 ? (stream => $true) : ()) } },
    headers => [ %carl ]);
is_deeply([ map { $_->{status} } @r ], [ (200) x 12 ], 'twelve admitted');
my @ids = map { $_->{json} ? $_->{json}{id}
                           : sse_events($_->{body})->[0]{response}{id} } @r;
is(scalar(grep { defined } @ids), 12, 'twelve ids');

# followers of the streamed ones, from both workers, and GETs and cancels
# of ended ones: none of them is charged
my @ends = map { settle($_, %carl) } @ids;
my @follows = map { $t->get("/k/v1/responses/$ids[$_]?stream=true", %carl) }
    grep { $_ % 2 } 0 .. 11;
is(scalar(grep { sse_events($_->{body})->[-1]{type} eq 'response.incomplete' }
    @follows), 6, 'their streams are followed to the end');
$t->post("/k/v1/responses/$_/cancel", undef, %carl) for @ids;
is_deeply([ map { $_->{status} } @ends ], [ ('incomplete') x 12 ],
    'each ends');
my $sum = 0;
$sum += $_->{usage}{total_tokens} for @ends;
ok(KimiTest::wait_for(5, sub { (left('carl') // -1) == 100000 - $sum }),
    "the key is charged their $sum tokens, once each")
    or diag('left: ' . (left('carl') // 'none') . ', expected '
            . (100000 - $sum));

# --- a small budget spent by responses running at once -------------------------

@r = $t->many(6, 'POST', '/k/v1/responses', sub {
    { model => 'kimi-test', input => "story small $_[0]",
      max_output_tokens => 40, background => $true } },
    headers => [ %dora ]);
is_deeply([ map { $_->{status} } @r ], [ (200) x 6 ],
    'six admitted at once with budget left (checked on arrival)');
ok(KimiTest::wait_for(5, sub { defined left('dora') && left('dora') == -100 }),
    'the debt is capped at one bucket')
    or diag('left: ' . (left('dora') // 'none'));
@ends = map { settle($_->{json}{id}, %dora) } @r;
is_deeply([ map { $_->{status} } @ends ], [ ('incomplete') x 6 ],
    'with the budget spent, GET reads what it paid for');
my $one = $r[0]{json}{id};
is($t->get("/k/v1/responses/$one/input_items", %dora)->{status}, 200,
    'and its input items');
is($t->post("/k/v1/responses/$one/cancel", undef, %dora)->{status}, 200,
    'cancels it');
is($t->http('DELETE', "/k/v1/responses/$one", undef, %dora)->{status}, 200,
    'and deletes it');
is($t->get("/k/v1/responses/$one")->{status}, 401, 'still only with its key');
# the bucket refills one token every 36 s (100/1h): the refusals below are
# judged against what was left just before them, a refill allowed
my $before = left('dora');
my $r = $t->post('/k/v1/responses', { model => 'kimi-test', input => 'x',
    background => $true }, %dora);
is($r->{status}, 429, 'then a background response is a 429');
is($r->{json}{error}{code}, 'rate_limit_exceeded', 'rate_limit_exceeded');
$r = $t->post('/k/v1/responses', { model => 'kimi-test', input => 'x',
    background => $true, stream => $true }, %dora);
is($r->{status}, 429, 'streamed too');
my $after = left('dora');
ok(defined $before && defined $after && $after >= $before && $after <= $before + 1,
   'refusals cost nothing') or diag("left before $before, after $after");

$t->stop;

done_testing();

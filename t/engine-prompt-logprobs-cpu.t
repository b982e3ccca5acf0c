#!/usr/bin/perl

# Logprobs of the prompt on the real cpu backend with the tiny model behind
# nginx: vLLM's prompt_logprobs (completions: per choice; chat: at the top)
# and OpenAI's echo with logprobs on /v1/completions.  The oracle is the
# engine's own generated-token logprobs: the entry of a prompt token that
# greedy decoding produced must carry that token's logprob and rank 1.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use JSON::PP;
use Test::More;
use KimiTest qw(completion_body chat_body);

my $t = KimiTest->new(workers => 1);
my $tiny = $t->tiny_model;
$t->{engine_args} = [ '--backend', 'cpu', '--model', $tiny, '--threads', 1,
    '--cpu-kv-cache-bytes', '32M' ];
$t->start;

my $true = JSON::PP::true;
my $prompt = 'The capital of France is';
my $ids = $t->post('/tokenize', { prompt => $prompt })->{json}{tokens};
ok(@$ids >= 3, 'prompt is ' . scalar(@$ids) . ' tokens');

# greedy continuation with its logprobs: the oracle
my $g = $t->post('/v1/completions', completion_body(prompt => $ids,
    max_tokens => 3, temperature => 0, ignore_eos => $true, logprobs => 2));
is($g->{status}, 200, 'greedy with logprobs: 200');
my $glp = $g->{json}{choices}[0]{logprobs}{token_logprobs};
my $gtxt = $g->{json}{choices}[0]{text};
my $gids = $t->post('/tokenize', { prompt => $gtxt })->{json}{tokens};

# ---- prompt_logprobs on /v1/completions -------------------------------------

my @ext = (@$ids, $gids->[0]);
my $r = $t->post('/v1/completions', completion_body(prompt => \@ext,
    max_tokens => 1, temperature => 0, prompt_logprobs => 3));
is($r->{status}, 200, 'prompt_logprobs 3: 200');
my $pl = $r->{json} && $r->{json}{choices}[0]{prompt_logprobs};
is(ref $pl, 'ARRAY', 'choices[0].prompt_logprobs is a list');
is(scalar @$pl, scalar @ext, 'one entry per prompt token');
ok(!defined $pl->[0], 'the first token has none (null)');
my $bad = 0;
for my $k (1 .. $#ext) {
    my $e = $pl->[$k];
    my $own = $e && $e->{$ext[$k]};
    $bad++ unless $own && defined $own->{logprob} && $own->{logprob} <= 0
        && $own->{rank} >= 1 && defined $own->{decoded_token}
        && keys(%$e) >= 3 && keys(%$e) <= 4;
}
is($bad, 0, 'each entry holds the prompt token (logprob, rank, '
    . 'decoded_token) and the 3 most likely');
my $last = $pl->[-1]{$ext[-1]};
is($last->{rank}, 1, 'the token greedy decoding chose has rank 1 there');
ok(abs($last->{logprob} - $glp->[0]) < 1e-4,
    "and the logprob it had when generated ($last->{logprob} vs $glp->[0])");
my ($top) = grep { $pl->[-1]{$_}{rank} == 1 } keys %{ $pl->[-1] };
is($top, $ext[-1], 'rank 1 is the greedy token');
is($r->{json}{choices}[0]{text}, ($t->post('/v1/completions',
    completion_body(prompt => \@ext, max_tokens => 1, temperature => 0))
    ->{json}{choices}[0]{text}), 'the completion itself is unchanged');
is($r->{json}{usage}{prompt_tokens}, scalar @ext, 'usage: prompt tokens');
is($r->{json}{usage}{completion_tokens}, 1,
    'usage: prompt entries are not completion tokens');

# a longer prompt than the 64-entry token ring, and prefix caching on
my @long = map { $ids->[$_ % @$ids] } 0 .. 99;
$t->post('/v1/completions', completion_body(prompt => \@long,
    max_tokens => 1, temperature => 0));
$r = $t->post('/v1/completions', completion_body(prompt => \@long,
    max_tokens => 2, temperature => 0, prompt_logprobs => 0));
is($r->{status}, 200, '100-token prompt after the same one was cached: 200');
$pl = $r->{json} && $r->{json}{choices}[0]{prompt_logprobs};
is(scalar @$pl, 100, 'all 100 entries (none skipped by the cache)');
is(scalar(grep { $_ && keys(%$_) == 1 } @$pl[1 .. 99]), 99,
    'prompt_logprobs 0: the prompt token alone in each entry');

# ---- echo with logprobs -----------------------------------------------------

$r = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 2, temperature => 0, ignore_eos => $true, echo => $true,
    logprobs => 1));
is($r->{status}, 200, 'echo + logprobs: 200');
my $c = $r->{json} && $r->{json}{choices}[0];
my $lp = $c->{logprobs};
is(scalar @{ $lp->{tokens} }, @$ids + 2, 'tokens: prompt then completion');
ok(!defined $lp->{token_logprobs}[0] && !defined $lp->{top_logprobs}[0],
    'the first prompt token: null logprob and top_logprobs');
is(scalar(grep { defined } @{ $lp->{token_logprobs} }), @$ids + 1,
    'every later token has a logprob');
is(join('', @{ $lp->{tokens} }), $c->{text},
    'the tokens spell the echoed text');
is($lp->{text_offset}[0], 0, 'text_offset starts at 0');
is($lp->{text_offset}[scalar @$ids], length($prompt),
    'the completion starts at the prompt length');
ok(abs($lp->{token_logprobs}[scalar @$ids] - $glp->[0]) < 1e-6,
    'the completion tokens keep their logprobs');
my $has_own = 0;
for my $k (1 .. $#{ $lp->{tokens} }) {
    my $m = $lp->{top_logprobs}[$k];
    $has_own++ if exists $m->{ $lp->{tokens}[$k] }
        && abs($m->{ $lp->{tokens}[$k] } - $lp->{token_logprobs}[$k]) < 1e-6
        && keys(%$m) >= 1 && keys(%$m) <= 2;
}
is($has_own, $#{ $lp->{tokens} }, 'each top_logprobs map holds the token '
    . 'itself and the 1 most likely (OpenAI: up to logprobs + 1)');
$r = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 2, temperature => 0, ignore_eos => $true, logprobs => 0));
my $z = $r->{json}{choices}[0]{logprobs};
is_deeply([ map { [ keys %$_ ] } @{ $z->{top_logprobs} } ],
    [ map { [ $_ ] } @{ $z->{tokens} } ],
    'logprobs 0: each map is the chosen token alone');

# streamed: the first chunk is the prompt with its logprobs, then the
# completion's chunks; together the same as the whole response
my $whole = $t->post('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 3, temperature => 0, ignore_eos => $true, echo => $true,
    logprobs => 2))->{json}{choices}[0];
$r = $t->sse('/v1/completions', completion_body(prompt => $prompt,
    max_tokens => 3, temperature => 0, ignore_eos => $true, echo => $true,
    logprobs => 2, stream => $true));
my @ch = map { $_->{choices}[0] }
    grep { ref $_ eq 'HASH' && @{ $_->{choices} // [] } } @{ $r->{events} };
is($ch[0]{text}, $prompt, 'streamed echo + logprobs: the first chunk is the '
    . 'prompt');
is(scalar @{ $ch[0]{logprobs}{tokens} }, scalar @$ids,
    'carrying its tokens\' logprobs');
ok(!defined $ch[0]{logprobs}{token_logprobs}[0], 'the first one null');
my (@st, @sl, @so);
for my $c (@ch) {
    push @st, @{ $c->{logprobs}{tokens} // [] };
    push @sl, @{ $c->{logprobs}{token_logprobs} // [] };
    push @so, @{ $c->{logprobs}{text_offset} // [] };
}
is(join('', map { $_->{text} } @ch), $whole->{text},
    'the chunks spell the non-streamed text');
is_deeply(\@st, $whole->{logprobs}{tokens}, 'the same tokens');
is_deeply(\@so, $whole->{logprobs}{text_offset}, 'the same text offsets');
is(scalar(grep { defined $sl[$_] && abs($sl[$_]
        - $whole->{logprobs}{token_logprobs}[$_]) < 1e-6 } 1 .. $#sl),
    $#sl, 'the same logprobs');

# ---- chat -------------------------------------------------------------------

$r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    max_tokens => 2, temperature => 0, prompt_logprobs => 1));
is($r->{status}, 200, 'chat prompt_logprobs: 200');
$pl = $r->{json} && $r->{json}{prompt_logprobs};
is(ref $pl, 'ARRAY', 'chat: prompt_logprobs at the top of the response');
is($r->{json}{usage}{prompt_tokens}, scalar @$pl,
    'one entry per token of the rendered prompt');

# ---- errors -------------------------------------------------------------------

for my $case (
    [ '/v1/completions', completion_body(prompt => 'x', stream => $true,
        prompt_logprobs => 1), qr/prompt_logprobs.*stream/,
        'prompt_logprobs with stream' ],
    [ '/v1/completions', completion_body(prompt => 'x',
        prompt_logprobs => 21), qr/\[0, 20\]/, 'prompt_logprobs 21' ],
    [ '/v1/chat/completions', chat_body(content => 'x',
        prompt_logprobs => -1), qr/\[0, 20\]/, 'prompt_logprobs -1' ],
) {
    $r = $t->post($case->[0], $case->[1]);
    is($r->{status}, 400, "$case->[3]: 400");
    like($r->{json} && $r->{json}{error}{message}, $case->[2],
        "$case->[3]: says why");
}

done_testing();

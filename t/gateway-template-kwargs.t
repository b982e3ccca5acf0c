#!/usr/bin/perl

# vLLM's chat_template_kwargs: each key a variable the chat template reads
# (a model directory whose chat_template.jinja switches on "thinking"),
# on /tokenize and chat alike; the names transformers passes itself
# (messages, tools, add_generation_prompt, the special tokens) cannot be
# replaced; anything but an object is a 400.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Cwd ();
use JSON::PP;
use Test::More;
use KimiTest qw(chat_body);

my $t = KimiTest->new(default => { text => 'ok' });
my $dir = $t->dir . '/model';
mkdir $dir or die "$dir: $!";
for my $f (qw(tiktoken.model tokenizer_config.json config.json)) {
    system('cp', "$t->{tokdir}/$f", "$dir/$f") == 0 or BAIL_OUT("cp $f");
}
KimiTest::write_file("$dir/chat_template.jinja",
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    . "{% if thinking %}[thinking {{ depth }}]{% endif %}"
    . "{% if add_generation_prompt %}assistant:{% endif %}");
$t->{tokdir} = Cwd::abs_path($dir);
$t->start;

my $true = JSON::PP::true;
my $msgs = [ { role => 'user', content => 'hi' } ];

sub rendered {
    my (%o) = @_;
    my $r = $t->post('/tokenize', { messages => $msgs,
        add_generation_prompt => $true, %o });
    return undef unless $r->{status} == 200;
    return $t->post('/detokenize', { tokens => $r->{json}{tokens} })
        ->{json}{prompt};
}

is(rendered(), "user: hi\nassistant:", 'no kwargs: the plain rendering');
is(rendered(chat_template_kwargs => { thinking => $true, depth => 2 }),
    "user: hi\n[thinking 2]assistant:",
    'chat_template_kwargs: the template sees thinking and depth');
is(rendered(chat_template_kwargs => { messages => [], bos_token => 'X',
        add_generation_prompt => JSON::PP::false }),
    "user: hi\nassistant:", 'messages, add_generation_prompt and *_token '
    . 'are not replaced');

my $a = $t->post('/v1/chat/completions', chat_body(content => 'hi'))
    ->{json}{usage}{prompt_tokens};
my $b = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    chat_template_kwargs => { thinking => $true, depth => 7 }))
    ->{json}{usage}{prompt_tokens};
ok($b > $a, "chat: the kwargs reach the prompt ($a -> $b tokens)");

my $r = $t->post('/v1/chat/completions', chat_body(content => 'hi',
    chat_template_kwargs => [1]));
is($r->{status}, 400, 'chat_template_kwargs not an object: 400');
is($r->{json}{error}{param}, 'chat_template_kwargs', 'naming it');

$t->stop;
done_testing();

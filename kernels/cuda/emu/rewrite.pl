#!/usr/bin/env perl
# CUDA emulation (kernels/cuda/emu, docs/DEVICE.md): rewrites one kernels/cuda/*.cu
# file into C++ that g++ compiles against the shim headers of this folder.
#   perl kernels/cuda/emu/rewrite.pl kernels/cuda/x.cu > build/emu/cuda/.../x.cpp
# Three rules, applied outside comments and string literals; every newline is kept
# and the output starts with `#line 1 "<the .cu file>"`, so compiler messages,
# __FILE__ and __LINE__ point into the .cu source:
#   1. NAME<<<grid, block[, smem[, stream]]>>>(args)   (NAME may be a template-id
#      like k<HD, PX>; the <<< >>> part may span lines)
#        -> emu_launch("NAME", __FILE__, __LINE__, grid, block, smem, stream, NAME, args)
#      with smem = 0 and stream = 0 when omitted, and no trailing `, args` when empty;
#   2. extern __shared__ [__align__(n)] T name[];
#        -> T *name = emu_dyn_smem<T>();          (this block's dynamic shared memory)
#   3. __shared__ T a[..], b[..];
#        -> static T a[..], b[..]; EMU_SHARED(a); EMU_SHARED(b);
#      (one copy per kernel instantiation, blocks run one after another; EMU_SHARED
#      fills it with NaN bytes when a block first reaches it, so that reading what no
#      thread of this block wrote shows up in the results).
use strict;
use warnings;

my $path = shift @ARGV or die "usage: rewrite.pl file.cu\n";
open my $fh, '<', $path or die "rewrite.pl: $path: $!\n";
my $src = do { local $/; <$fh> };
close $fh;

# $code: the source with comments and string/char literals blanked (same length,
# newlines kept), so that the rules only ever match real code.
my $code = $src;
$code =~ s{(//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')}{
    my $m = $1; (my $b = $m) =~ s/[^\n]/ /g; $b }gse;

my @edits; # [start, end (exclusive), replacement]

# index of the bracket matching the one at $i (forward for ( <, backward for ) >)
sub match_fwd {
    my ($s, $i, $open, $close) = @_;
    my $depth = 0;
    for (my $j = $i; $j < length $s; $j++) {
        my $c = substr($s, $j, 1);
        $depth++ if $c eq $open;
        $depth-- if $c eq $close;
        return $j if $depth == 0;
    }
    die "rewrite.pl: $path: unbalanced '$open' at offset $i\n";
}
sub match_back {
    my ($s, $i, $open, $close) = @_;
    my $depth = 0;
    for (my $j = $i; $j >= 0; $j--) {
        my $c = substr($s, $j, 1);
        $depth++ if $c eq $close;
        $depth-- if $c eq $open;
        return $j if $depth == 0;
    }
    die "rewrite.pl: $path: unbalanced '$close' at offset $i\n";
}
# split at top-level commas
sub split_args {
    my ($s) = @_;
    my @parts;
    my ($depth, $cur) = (0, '');
    for my $c (split //, $s) {
        $depth++ if $c =~ /[(\[{]/;
        $depth-- if $c =~ /[)\]}]/;
        if ($c eq ',' && $depth == 0) { push @parts, $cur; $cur = ''; next }
        $cur .= $c;
    }
    push @parts, $cur;
    return @parts;
}
sub line_of { my ($i) = @_; return 1 + (substr($src, 0, $i) =~ tr/\n//) }
sub newlines { my ($s) = @_; return "\n" x ($s =~ tr/\n//) }

# ---- rule 1: kernel launches ----------------------------------------------------------
while ($code =~ /<<</g) {
    my $lt = pos($code) - 3;
    my $gt = index($code, '>>>', $lt + 3);
    die "rewrite.pl: $path:" . line_of($lt) . ": '<<<' without '>>>'\n" if $gt < 0;
    # the kernel name: an identifier, optionally followed by template arguments <...>
    my $e = $lt - 1;
    $e-- while $e >= 0 && substr($code, $e, 1) =~ /\s/;
    my $name_end = $e + 1;
    $e = match_back($code, $e, '<', '>') - 1 if substr($code, $e, 1) eq '>';
    $e-- while $e >= 0 && substr($code, $e, 1) =~ /\s/;
    $e-- while $e >= 0 && substr($code, $e, 1) =~ /[\w:]/;
    my $name_start = $e + 1;
    my $name = substr($src, $name_start, $name_end - $name_start);
    die "rewrite.pl: $path:" . line_of($lt) . ": no kernel name before '<<<'\n" if $name !~ /^[A-Za-z_]/;
    my @cfg = split_args(substr($src, $lt + 3, $gt - $lt - 3));
    die "rewrite.pl: $path:" . line_of($lt) . ": launch needs 2 to 4 values in <<< >>>\n"
        if @cfg < 2 || @cfg > 4;
    push @cfg, ' 0' while @cfg < 4;
    my $p = $gt + 3;
    $p++ while substr($code, $p, 1) =~ /\s/;
    die "rewrite.pl: $path:" . line_of($lt) . ": no '(' after '>>>'\n" if substr($code, $p, 1) ne '(';
    my $close = match_fwd($code, $p, '(', ')');
    my $args = substr($src, $p + 1, $close - $p - 1);
    (my $flat = $name) =~ s/\s+/ /g;
    my $rep = "emu_launch(\"$flat\", __FILE__, __LINE__," . join(',', @cfg) . ", $name";
    $rep .= ",$args" if $args =~ /\S/;
    $rep .= ")";
    # keep the line count: newlines dropped with the <<< >>> punctuation come back at the end
    my $kept = join('', $name, @cfg, $args);
    my $lost = (substr($src, $name_start, $close + 1 - $name_start) =~ tr/\n//) - ($kept =~ tr/\n//);
    $rep .= "\n" x $lost if $lost > 0;
    push @edits, [$name_start, $close + 1, $rep];
    pos($code) = $close + 1;
}

# ---- rule 2: dynamic shared memory ----------------------------------------------------
while ($code =~ /\bextern\s+__shared__\s+([^;{}\[]*?)\b(\w+)\s*\[\s*\]\s*;/g) {
    my ($s, $e) = ($-[0], $+[0]);
    my ($type, $var) = ($1, $2);
    $type =~ s/__align__\s*\([^)]*\)//g;
    $type =~ s/^\s+|\s+$//g;
    $type =~ s/\s+/ /g;
    push @edits, [$s, $e, "$type *$var = emu_dyn_smem<$type>();" . newlines(substr($src, $s, $e - $s))];
}

# ---- rule 3: static shared memory -----------------------------------------------------
while ($code =~ /(?<![\w])__shared__\b([^;{}]*);/g) {
    my ($s, $e) = ($-[0], $+[0]);
    next if substr($code, 0, $s) =~ /\bextern\s+$/; # rule 2's
    my $decl = substr($src, $s + length('__shared__'), $e - 1 - $s - length('__shared__'));
    my @names;
    for my $d (split_args($decl)) {
        (my $t = $d) =~ s/__align__\s*\([^)]*\)//g;
        $t =~ s/[\[=].*//s; # the declarator's name is the last identifier before [ or =
        die "rewrite.pl: $path:" . line_of($s) . ": cannot read the __shared__ declaration\n"
            unless $t =~ /(\w+)\s*$/;
        push @names, $1;
    }
    push @edits, [$s, $e, "static$decl;" . join('', map { " EMU_SHARED($_);" } @names)];
}

# apply the edits from the end, so that offsets stay valid
my $out = $src;
for my $ed (sort { $b->[0] <=> $a->[0] } @edits) {
    substr($out, $ed->[0], $ed->[1] - $ed->[0]) = $ed->[2];
}
print "#line 1 \"$path\"\n", $out;

/* Evaluation metrics over scored positions (targets != -100), mad.md §4.4. */
#ifndef PLAB_METRICS_H
#define PLAB_METRICS_H

#include "../core/real.h"

typedef struct {
    double acc_sum;      /* sum over batches of (MAD macro accuracy x batch size) */
    double ppl_sum;      /* sum over batches of (batch perplexity x batch size) */
    double nll_sum;      /* total NLL over scored tokens */
    long correct, scored;
    long seqs;           /* sequences seen (batch-size weights) */
} EvalAcc;

/* Adds one evaluation batch of n positions from `nseq` sequences:
 * MAD accuracy = per-batch mean over classes seen (tp+fp+fn > 0) of tp/(tp+fn),
 * the torchmetrics macro MulticlassAccuracy that Lightning averages per batch. */
void eval_add_batch(EvalAcc *e, const int *pred, const real *nll, const int *targets, long n,
                    int nseq, int V);
double eval_mad_acc(const EvalAcc *e);
double eval_token_acc(const EvalAcc *e);
double eval_loss(const EvalAcc *e);
double eval_ppl(const EvalAcc *e);

#endif

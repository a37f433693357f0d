"""Plain and Medusa decoding, over the model and heads layers. One module per concern, each
importing only the ones above it here:

    sampling     Sampling (how tokens are chosen, every decoder reads it), softmax and top-p
    core         plain decoding: the one model call, prefill, one-token steps, the edge cases
    tree         tree specs (presets, files, validation) and TreeBuffers, their tables (numpy only)
    tree_vars    a tree's tables as Jittor vars, cached per spec (resolve_tree)
    acceptance   the acceptance rules: greedy, typical, speculative sampling over the tree
    steps        the Medusa steps: prefill, propose, tree_decode, evaluate_posterior, update_inputs
    stepper      the Stepper strategy the loop runs one step with, and HostStepper (steps.py)
    device_loop  DeviceStepper: the greedy step as one graph on the device, one fetch a step
    vocab_check  the full-vocabulary check as the loop's other strategy (NoCheck, VocabCheck)
    loop         the one Medusa loop: medusa_stream, medusa_generate, MedusaResult
"""

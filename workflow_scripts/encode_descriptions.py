from residual.descriptions.dictionary import encode_dictionary
from residual.descriptions.sources import read_texts
from residual.models.loaded import load_model
from residual.runtime.device import pick_device
from residual.runtime.workflow import rule_context

with rule_context(snakemake) as log:
    encode = snakemake.config["encode"]  # device and batch size: float rounding only, not params
    model = load_model(snakemake.params.model, name=snakemake.wildcards.model, device=pick_device(encode["device"]))
    texts = read_texts(snakemake.input.texts)
    dictionary = encode_dictionary(model, texts, batch_size=encode["batch_size"])
    dictionary.save(snakemake.output[0])
    log.info("%d descriptions encoded by %s: [%d, %d]", len(texts), snakemake.wildcards.model, *dictionary.embeddings.shape)

import numpy as np, torch
from scipy.stats import spearmanr
from ie_env.vocab.embedded import load_embedded_vocabulary
from ie_env.vocab.text_embed import concept_embeddings
from ie_env.worlds.embedded import EmbeddedWorld, WorldConfig
from ie_env.learner.surrogate import WhiteningSurrogate
v=load_embedded_vocabulary(); E=concept_embeddings(v)
for a in (0.8, 0.95):
  w=EmbeddedWorld(WorldConfig(fidelity="latent", alignment=a), v, E)
  tr,_,_=w.target_split("train")
  s=WhiteningSurrogate(16); s.update(np.tile(tr,(25,1)))
  g=w.relevance; idx=np.random.default_rng(0).choice(len(g),500,replace=False)
  ts=(E[idx]@E[w.target_ids].T).max(1)
  for c in (0.0, 2.0, 4.0, 8.0):
    def feat(x):
        f=(x-s.mean)@s.W; f=np.concatenate([f, np.full((len(f),1),c)],1); return f/np.linalg.norm(f,axis=1,keepdims=True)
    tf=feat(tr)
    r=[]
    for i in idx:
        cs,ii=w.search(int(i),0,50); x=w.image_latents(cs,ii,0); sims=feat(x)@tf.T
        ir=np.sort(sims,1)[:,-15:].mean(1); r.append(np.sort(ir)[-10:].mean())
    r=np.array(r)
    print(a,c,"r~g %.2f r~textsim %.2f"%(spearmanr(r,g[idx])[0], spearmanr(r,ts)[0]), "g~ts %.2f"%spearmanr(g[idx],ts)[0])

import os,re,sys,itertools
def modules(src):
    mods={}
    for root,_,files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'): continue
            p=os.path.join(root,f); rel=os.path.relpath(p,src)[:-3]
            parts=rel.split('/')
            if parts[-1] in ('lib','main'): parts=parts[:-1]
            if parts and parts[-1]=='mod': parts=parts[:-1]
            mods['::'.join(parts)]=p
    return mods
def deps(src):
    mods=modules(src); g={}
    for m,p in mods.items():
        text=open(p).read()
        # strip test modules roughly
        out=set()
        for mm in re.findall(r'crate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)',text):
            parts=mm.split('::')
            for i in range(len(parts),0,-1):
                c='::'.join(parts[:i])
                if c in mods: out.add(c); break
        mp=m.split('::') if m else []
        for sup in re.findall(r'\bsuper::([a-z_][a-z0-9_]*)',text):
            base=mp[:-1]
            c='::'.join(base+[sup])
            if c in mods: out.add(c)
        out.discard(m)
        # top-level module only
        g[m]=out
    return g
for crate in sys.argv[1:]:
    g=deps(crate)
    top=lambda m:m.split('::')[0]
    for a in g:
        for b in g[a]:
            if a in g.get(b,()) and a<b and not (b.startswith(a+'::') or a.startswith(b+'::')):
                print(crate, 'cycle:', a,'<->',b)
    G={}
    for a in g:
        for b in g[a]:
            ta,tb=top(a),top(b)
            if ta!=tb: G.setdefault(ta,set()).add(tb)
    for a in G:
        for b in G[a]:
            if a<b and a in G.get(b,()): print(crate,'top-cycle:',a,'<->',b)
